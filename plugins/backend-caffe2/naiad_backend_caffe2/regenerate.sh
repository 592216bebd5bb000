#!/usr/bin/env sh
# Regenerate caffe2_pb2.py and caffe2_pb2.pyi (both committed) from caffe2.proto, so users never
# need protoc. Same protoc as naiad's own schemas (see core/naiad/config/regenerate.sh):
#
#   python -m venv /tmp/gen && /tmp/gen/bin/pip install grpcio-tools==1.74.0
#   plugins/backend-caffe2/naiad_backend_caffe2/regenerate.sh /tmp/gen/bin/python
#
# Compiled with `-I plugins/backend-caffe2`, so the descriptor is named
# "naiad_backend_caffe2/caffe2.proto" and the module imports as naiad_backend_caffe2.caffe2_pb2.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
plugin=$(cd "$here/.." && pwd)
python=${1:-python}
cd "$plugin"
"$python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. naiad_backend_caffe2/caffe2.proto
