#!/usr/bin/env sh
# Regenerate model_config_pb2.py and model_config_pb2.pyi (both committed) from
# model_config.proto, so users never need protoc.
#
#   python -m venv /tmp/gen && /tmp/gen/bin/pip install grpcio-tools==1.74.0
#   core/naiad/config/regenerate.sh /tmp/gen/bin/python
#
# grpcio-tools 1.74.0 bundles protoc 31.1, whose Python code asks for a protobuf runtime
# >= 6.31.1 (the floor in core/pyproject.toml); protobuf 7.x runtimes accept it too. A newer
# grpcio-tools raises that floor: check the ValidateProtobufRuntimeVersion(...) call at the top
# of the generated file before committing.
#
# The proto is compiled with `-I core` so its descriptor name is
# "naiad/config/model_config.proto" and the module imports as naiad.config.model_config_pb2.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
core=$(cd "$here/../.." && pwd)
python=${1:-python}
cd "$core"
"$python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. naiad/config/model_config.proto
