#!/usr/bin/env bash
# Regenerate the Python code of proto/serpens/v1/*.proto (checked in, so a fresh clone works).
# Needs grpcio-tools (pip install -e '.[dev]'); its protoc must match the protobuf runtime
# pinned in pyproject.toml, as the generated code checks the runtime version on import.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m grpc_tools.protoc -I proto --python_out=proto --pyi_out=proto --grpc_python_out=proto \
  proto/serpens/v1/*.proto
# protoc writes absolute imports from the proto root (`from serpens.v1 import ...`); the code is
# installed as serpens.proto.serpens.v1 (pyproject package-dir), so point the imports there.
sed -i 's/^from serpens\.v1 import /from serpens.proto.serpens.v1 import /' \
  proto/serpens/v1/*_pb2_grpc.py proto/serpens/v1/*_pb2.py proto/serpens/v1/*.pyi
grep -h "ValidateProtobufRuntimeVersion" -A 6 proto/serpens/v1/serpens_pb2.py | tr -d ' \n' | \
  sed 's/.*PUBLIC,\([0-9]*\),\([0-9]*\),\([0-9]*\).*/generated for protobuf runtime \1.\2.\3\n/'
