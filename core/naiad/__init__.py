"""naiad: a model inference server that speaks Triton's protocols, with backends as plugins.

A plugin imports what it needs from here::

    from naiad import hookimpl, InferenceBackend, CustomInstance
"""

from __future__ import annotations

import pluggy

from .backend import CustomInstance, InferenceBackend, InstanceContext
from .errors import (
    InternalError,
    InvalidArgument,
    ModelLoadError,
    NaiadError,
    NotFound,
    Unavailable,
    Unsupported,
)
from .inference import InferRequest, InferResponse, RequestedOutput

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("naiad")

__all__ = [
    "CustomInstance",
    "InferRequest",
    "InferResponse",
    "InferenceBackend",
    "InstanceContext",
    "InternalError",
    "InvalidArgument",
    "ModelLoadError",
    "NaiadError",
    "NotFound",
    "RequestedOutput",
    "Unavailable",
    "Unsupported",
    "__version__",
    "hookimpl",
]
