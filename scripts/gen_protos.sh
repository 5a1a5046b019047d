#!/usr/bin/env bash
# Regenerate the gRPC code for the contracts under protos/cube/ (make protos).
# Output is committed; never edit it by hand. grpcio stubs go to sdk/gen (imported by services and
# the operator client), betterproto dataclasses to sdk/typed (the published typed client).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
# protoc finds the betterproto plugin (protoc-gen-python_betterproto) on PATH.
export PATH="$PWD/.venv/bin:$PATH"
mapfile -t PROTOS < <(find protos/cube -name '*.proto' | sort)
((${#PROTOS[@]})) || { echo "no protos"; exit 0; }

rm -rf sdk/gen/cube && mkdir -p sdk/gen
"$PY" -m grpc_tools.protoc -Iprotos --python_out=sdk/gen --grpc_python_out=sdk/gen --pyi_out=sdk/gen "${PROTOS[@]}"
# protoc writes absolute imports rooted at the proto package (`from cube.v1 import x_pb2`);
# rewrite them so the code lives inside our own sdk package.
find sdk/gen/cube -name '*.py' -o -name '*.pyi' | xargs sed -i -E 's/^from cube\.v1 import /from sdk.gen.cube.v1 import /'
for d in sdk/gen sdk/gen/cube sdk/gen/cube/v1; do touch "$d/__init__.py"; done

rm -rf sdk/typed && mkdir -p sdk/typed
"$PY" -m grpc_tools.protoc -Iprotos --python_betterproto_out=sdk/typed "${PROTOS[@]}"
touch sdk/typed/__init__.py
echo "generated $(find sdk/gen/cube sdk/typed -name '*.py' | wc -l) modules from ${#PROTOS[@]} protos"
