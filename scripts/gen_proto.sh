#!/usr/bin/env bash
# Regenerate the Python protobuf messages and gRPC stubs for the etcd v3 API.
#
# The .proto files live in src/ultraplane/etcd/proto/ and import each other by their path under
# src/ ("ultraplane/etcd/proto/kv.proto"), so descriptors are registered under names that cannot
# clash with other copies of the etcd protos (e.g. the etcd3 client's) in one process. protoc then
# emits absolute imports ("from ultraplane.etcd.proto import kv_pb2"); the sed below turns them
# into package-relative ones so the generated package works wherever it is vendored.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
out="$root/src/ultraplane/etcd/proto"

cd "$root/src"
"$python" -m grpc_tools.protoc -I . \
  --python_out=. --grpc_python_out=. \
  ultraplane/etcd/proto/kv.proto ultraplane/etcd/proto/auth.proto ultraplane/etcd/proto/rpc.proto

sed -i -E 's/^from ultraplane\.etcd\.proto import /from . import /' "$out"/*_pb2.py "$out"/*_pb2_grpc.py
# Register into our private descriptor pool and build classes without the default symbol database
# (see _pool.py for why).
sed -i -E \
  -e 's/_builder\.BuildTopDescriptorsAndMessages\(/_ultraplane_pool.build_messages(/' \
  -e 's/^(from google\.protobuf\.internal import builder as _builder)$/\1\nfrom . import _pool as _ultraplane_pool/' \
  -e 's/_descriptor_pool\.Default\(\)\.AddSerializedFile/_ultraplane_pool.POOL.AddSerializedFile/' \
  "$out"/*_pb2.py
echo "generated: $(cd "$out" && ls ./*_pb2*.py* | tr '\n' ' ')"
