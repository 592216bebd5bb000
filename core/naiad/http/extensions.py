"""Handlers of Triton's HTTP extensions beyond inference: shared memory, trace and logging.

Each parses the transport-free request, calls the data plane's transport-free object (the
:class:`~naiad.shm.SharedMemoryManager`, the :class:`~naiad.trace.TraceSettings`, the
:mod:`naiad.logs` settings) and serialises; the route table is :mod:`naiad.http.endpoints`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import logs
from ..errors import InvalidArgument
from .handlers import Answer, json_answer

if TYPE_CHECKING:
    from .edge import Edge, Request

_OK: Answer = (200, b"", None, None)


def _uint(body: dict[str, Any], key: str, default: int | None = None) -> int:
    value = body.get(key, default)
    if value is None:
        raise InvalidArgument(f"Shared memory register request has no '{key}' field")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(
            f"Unable to parse '{key}': attempt to access JSON non-unsigned-integer as "
            "unsigned-integer"
        )
    return value


# ---- system shared memory -----------------------------------------------------------------------


def shm_status(edge: Edge, req: Request) -> Answer:
    return json_answer(edge.dataplane.shm.status(req.params.get("region", "")))


def shm_register(edge: Edge, req: Request) -> Answer:
    dp = edge.dataplane
    dp.check_client_shm()
    body = req.json()
    key = body.get("key")
    if key is None:
        raise InvalidArgument("Shared memory register request has no 'key' field")
    if not isinstance(key, str):
        raise InvalidArgument("Unable to parse 'key': attempt to access JSON non-string as string")
    offset = _uint(body, "offset", 0)
    byte_size = _uint(body, "byte_size")
    dp.shm_register(req.params["region"], key, offset, byte_size)
    return _OK


def shm_unregister(edge: Edge, req: Request) -> Answer:
    edge.dataplane.shm_unregister(req.params.get("region", ""))
    return _OK


# ---- CUDA shared memory: naiad has no GPU memory support ----------------------------------------


def cuda_shm_status(edge: Edge, req: Request) -> Answer:
    return json_answer(edge.dataplane.cuda_shm_status(req.params.get("region", "")))


def cuda_shm_register(edge: Edge, req: Request) -> Answer:
    edge.dataplane.cuda_shm_register(req.params["region"])
    return _OK


def cuda_shm_unregister(edge: Edge, req: Request) -> Answer:
    edge.dataplane.cuda_shm_unregister(req.params.get("region", ""))
    return _OK


# ---- trace settings (stored and reported; naiad does not trace requests yet) --------------------


def trace_setting(edge: Edge, req: Request) -> Answer:
    model = req.params.get("model", "")
    changes = req.json() if req.method == "POST" else None
    return json_answer(edge.dataplane.trace_setting(model, changes))


# ---- logging settings ---------------------------------------------------------------------------


def log_setting(edge: Edge, req: Request) -> Answer:
    if req.method == "POST":
        return json_answer(logs.update_settings(req.json()))
    return json_answer(logs.get_settings())
