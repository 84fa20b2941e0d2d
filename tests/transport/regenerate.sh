#!/usr/bin/env bash
# Regenerates the test-only Echo service modules from transport_echo.proto.
# The generated files are marked so ruff leaves their style alone.
set -euo pipefail
cd "$(dirname "$0")"
../../.venv/bin/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. transport_echo.proto
for generated in transport_echo_pb2.py transport_echo_pb2_grpc.py; do
  printf '# ruff: noqa\n%s\n' "$(cat "$generated")" > "$generated"
done
