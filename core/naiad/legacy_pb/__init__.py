"""Protobuf messages of the legacy TRTIS 1.x HTTP API (package ``naiad.trtis``).

``trtis.proto`` is naiad's copy of the TRTIS messages the ``/api/*`` endpoints speak;
``trtis_pb2.py`` / ``.pyi`` are generated from it and committed (see ``regenerate.sh``).
"""

from .trtis_pb2 import (
    InferRequestHeader,
    InferResponseHeader,
    ModelReadyState,
    ModelRepositoryIndex,
    ModelStatus,
    ModelVersionStatus,
    RequestStatus,
    RequestStatusCode,
    ServerReadyState,
    ServerStatus,
    SharedMemoryRegion,
    SharedMemoryStatus,
)

__all__ = [
    "InferRequestHeader",
    "InferResponseHeader",
    "ModelReadyState",
    "ModelRepositoryIndex",
    "ModelStatus",
    "ModelVersionStatus",
    "RequestStatus",
    "RequestStatusCode",
    "ServerReadyState",
    "ServerStatus",
    "SharedMemoryRegion",
    "SharedMemoryStatus",
]
