#!/usr/bin/env bash
# Run the guest agent in the foreground on this host (ports 49983 and 49999) over a throwaway
# overlay of / as its template root; Ctrl-C stops it and removes the overlay.
# Then: E2B_DEBUG=true E2B_API_KEY=x .venv/bin/python -c 'from e2b_code_interpreter import Sandbox; ...'
# Extra agent flags go after --, e.g. scripts/envd_dev.sh -- --log-level DEBUG
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $EUID -eq 0 ]] || { echo "envd_dev: needs root (overlay mount, chroot)" >&2; exit 1; }
[[ "${1:-}" == "--" ]] && shift
exec .venv/bin/python -m services.envd.devroot -- "$@"
