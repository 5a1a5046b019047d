#!/usr/bin/env bash
# Bring the whole service up on this node (make up): local DNS for *.cube.localhost, guest
# artifacts, the supervisor with etcd and every service, the default template, and a smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
STATE=${CUBE_STATE_DIR:-/var/lib/cube}
mkdir -p "$STATE/logs" "$STATE/run"

bash scripts/local_dns.sh
if [[ "${CUBE_ALLOW_TCG:-}" =~ ^(1|true|yes|on)$ ]]; then
  echo "note: this CPU has no VT-x/AMD-V, so guests run under QEMU's emulator (TCG), which QEMU does"
  echo "      not treat as a security boundary (CUBE_ALLOW_TCG=1). Run untrusted code on a KVM host."
fi
$PY -m services.cubelet.artifacts >/dev/null

if [[ -f "$STATE/run/supervisor.pid" ]] && kill -0 "$(cat "$STATE/run/supervisor.pid")" 2>/dev/null; then
  SUP=$(cat "$STATE/run/supervisor.pid")
  echo "supervisor already running (pid $SUP)"
else
  rm -f "$STATE/run/ready"
  # Its own session: the supervisor outlives this shell (and `make`), like a service manager would.
  setsid "$PY" -m deploy.supervisor run >>"$STATE/logs/supervisor.out" 2>&1 < /dev/null &
  SUP=$!
  echo "supervisor started (pid $SUP), logs in $STATE/logs/"
fi
for _ in $(seq 1 600); do
  [[ -f "$STATE/run/ready" ]] && break
  if ! kill -0 "$SUP" 2>/dev/null; then
    echo "the supervisor stopped while starting; last lines of $STATE/logs/supervisor.out:" >&2
    tail -20 "$STATE/logs/supervisor.out" >&2
    exit 1
  fi
  sleep 0.5
done
[[ -f "$STATE/run/ready" ]] || { echo "services not ready after 5 minutes; see $STATE/logs/" >&2; exit 1; }
echo "services ready"
$PY -m deploy.bootstrap
echo
echo "Cube is up. Point the E2B SDKs at it with:"
echo '  eval "$(make -s env)"'
