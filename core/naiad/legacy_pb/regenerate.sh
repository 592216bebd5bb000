#!/usr/bin/env sh
# Regenerate trtis_pb2.py and trtis_pb2.pyi (both committed) from trtis.proto, so users never
# need protoc. Same pinned toolchain as core/naiad/config/regenerate.sh:
#
#   python -m venv /tmp/gen && /tmp/gen/bin/pip install grpcio-tools==1.74.0
#   core/naiad/legacy_pb/regenerate.sh /tmp/gen/bin/python
#
# grpcio-tools 1.74.0 bundles protoc 31.1, whose Python code asks for a protobuf runtime
# >= 6.31.1 (the floor in core/pyproject.toml). The proto is compiled with `-I core` so it
# imports naiad/config/model_config.proto and the module imports as naiad.legacy_pb.trtis_pb2.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
core=$(cd "$here/../.." && pwd)
python=${1:-python}
cd "$core"
"$python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. naiad/legacy_pb/trtis.proto
