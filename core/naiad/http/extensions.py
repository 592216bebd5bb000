"""Handlers of Triton's HTTP extensions beyond inference: shared memory, trace and logging.

Each parses the request, calls the data plane's transport-free object (the
:class:`~naiad.shm.SharedMemoryManager`, the :class:`~naiad.trace.TraceSettings`, the
:mod:`naiad.logs` settings) and serialises; the route table lives in :mod:`naiad.http.app`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import logs
from ..errors import InvalidArgument
from .common import DATAPLANE, json_body, json_response

_OK = 200


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


async def shm_status(request: web.Request) -> web.Response:
    dp = request.app[DATAPLANE]
    return json_response(dp.shm.status(request.match_info.get("region", "")))


async def shm_register(request: web.Request) -> web.Response:
    dp = request.app[DATAPLANE]
    dp.check_client_shm()
    body = await json_body(request)
    key = body.get("key")
    if key is None:
        raise InvalidArgument("Shared memory register request has no 'key' field")
    if not isinstance(key, str):
        raise InvalidArgument("Unable to parse 'key': attempt to access JSON non-string as string")
    offset = _uint(body, "offset", 0)
    byte_size = _uint(body, "byte_size")
    dp.shm_register(request.match_info["region"], key, offset, byte_size)
    return web.Response(status=_OK)


async def shm_unregister(request: web.Request) -> web.Response:
    request.app[DATAPLANE].shm_unregister(request.match_info.get("region", ""))
    return web.Response(status=_OK)


# ---- CUDA shared memory: naiad has no GPU memory support ----------------------------------------


async def cuda_shm_status(request: web.Request) -> web.Response:
    dp = request.app[DATAPLANE]
    return json_response(dp.cuda_shm_status(request.match_info.get("region", "")))


async def cuda_shm_register(request: web.Request) -> web.Response:
    request.app[DATAPLANE].cuda_shm_register(request.match_info["region"])
    return web.Response(status=_OK)


async def cuda_shm_unregister(request: web.Request) -> web.Response:
    request.app[DATAPLANE].cuda_shm_unregister(request.match_info.get("region", ""))
    return web.Response(status=_OK)


# ---- trace settings (stored and reported; naiad does not trace requests yet) --------------------


async def trace_setting(request: web.Request) -> web.Response:
    dp = request.app[DATAPLANE]
    model = request.match_info.get("model", "")
    changes = await json_body(request) if request.method == "POST" else None
    return json_response(dp.trace_setting(model, changes))


# ---- logging settings ---------------------------------------------------------------------------


async def log_setting(request: web.Request) -> web.Response:
    if request.method == "POST":
        body = await json_body(request)
        return json_response(logs.update_settings(body))
    return json_response(logs.get_settings())
