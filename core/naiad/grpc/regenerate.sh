#!/usr/bin/env sh
# Regenerate the gRPC modules (all committed) from the .proto files here, so users never need
# protoc or grpcio-tools:
#
#   python -m venv /tmp/gen && /tmp/gen/bin/pip install grpcio-tools==1.74.0
#   core/naiad/grpc/regenerate.sh /tmp/gen/bin/python
#
# Messages: grpc_service_pb2.py/.pyi and health_pb2.py/.pyi. Services: service_pb2_grpc.py and
# health_service_pb2_grpc.py only (their _pb2 modules would register Triton's service names in
# the descriptor pool, which tritonclient also does; see service.proto).
#
# grpcio-tools 1.74.0 bundles protoc 31.1 (protobuf runtime >= 6.31.1, the floor in
# core/pyproject.toml) and writes GRPC_GENERATED_VERSION = '1.74.0' into the _grpc modules
# (grpcio >= 1.74.0, also the floor there). The files are compiled with `-I core`, so they import
# as naiad.grpc.*, like naiad/config/regenerate.sh does.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
core=$(cd "$here/../.." && pwd)
python=${1:-python}
cd "$core"
"$python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. \
    naiad/grpc/grpc_service.proto naiad/grpc/health.proto
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m grpc_tools.protoc -I . --python_out="$tmp" --grpc_python_out=. \
    naiad/grpc/service.proto naiad/grpc/health_service.proto
