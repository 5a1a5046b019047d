#!/usr/bin/env bash
# Regenerate the message classes of the guest agent's Connect services (protos/envd/*.proto)
# into services/envd/gen. Output is committed; never edit it by hand.
# The agent uses only the messages (its Connect server is its own), so no gRPC stubs are made.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=services/envd/gen
rm -rf "$OUT" && mkdir -p "$OUT"
"$PY" -m grpc_tools.protoc -Iprotos/envd --python_out="$OUT" --pyi_out="$OUT" protos/envd/process.proto protos/envd/filesystem.proto
echo '"""Generated from protos/envd by scripts/gen_envd_protos.sh; do not edit."""' > "$OUT/__init__.py"
echo "generated $(find "$OUT" -name '*_pb2.py' | wc -l) modules into $OUT"
