"""Handlers of Triton's HTTP extensions beyond inference: shared memory, trace and logging.

Each parses the request, calls the data plane's transport-free object (the
:class:`~naiad.shm.SharedMemoryManager`, the :class:`~naiad.trace.TraceSettings`, the
:mod:`naiad.logs` settings) and serialises; the route table lives in :mod:`naiad.http.app`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import logs
from ..dataplane import DataPlane
from ..errors import InvalidArgument, Unsupported
from .common import DATAPLANE, error_response, json_body, json_response

_OK = 200


def _check_client_shm(dp: DataPlane) -> None:
    if not dp.options.allow_client_shm:
        raise Unsupported(
            "client shared memory is disabled; start the server with --allow-client-shm=true"
        )


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
    _check_client_shm(dp)
    body = await json_body(request)
    key = body.get("key")
    if key is None:
        raise InvalidArgument("Shared memory register request has no 'key' field")
    if not isinstance(key, str):
        raise InvalidArgument("Unable to parse 'key': attempt to access JSON non-string as string")
    offset = _uint(body, "offset", 0)
    byte_size = _uint(body, "byte_size")
    dp.shm.register(request.match_info["region"], key, offset, byte_size)
    return web.Response(status=_OK)


async def shm_unregister(request: web.Request) -> web.Response:
    dp = request.app[DATAPLANE]
    _check_client_shm(dp)
    dp.shm.unregister(request.match_info.get("region", ""))
    return web.Response(status=_OK)


# ---- CUDA shared memory: naiad has no GPU memory support ----------------------------------------


async def cuda_shm_status(request: web.Request) -> web.Response:
    region = request.match_info.get("region", "")
    if not region:
        return json_response([])
    # region names are one namespace: a registered system region is not a CUDA one
    if any(r["name"] == region for r in request.app[DATAPLANE].shm.status()):
        return error_response(
            404,
            f"The region named '{region}' is registered as system shared memory, not CUDA "
            "shared memory",
        )
    return error_response(404, f"Unable to find cuda shared memory region: '{region}'")


async def cuda_shm_register(request: web.Request) -> web.Response:
    _check_client_shm(request.app[DATAPLANE])
    region = request.match_info["region"]
    raise InvalidArgument(
        f"failed to register CUDA shared memory region: '{region}', GPUs not supported"
    )


async def cuda_shm_unregister(request: web.Request) -> web.Response:
    """Nothing is ever registered, so there is nothing to do (tritonclient's examples and
    perf_analyzer call unregister-all before they start)."""
    _check_client_shm(request.app[DATAPLANE])
    return web.Response(status=_OK)


# ---- trace settings (stored and reported; naiad does not trace requests yet) --------------------


async def trace_setting(request: web.Request) -> web.Response:
    dp = request.app[DATAPLANE]
    model = request.match_info.get("model", "")
    if model and not dp.model_ready(model):
        raise InvalidArgument(f"Request for unknown model : {model}")
    if request.method == "POST":
        body = await json_body(request)
        return json_response(dp.trace.update(body, model))
    return json_response(dp.trace.get(model))


# ---- logging settings ---------------------------------------------------------------------------


async def log_setting(request: web.Request) -> web.Response:
    if request.method == "POST":
        body = await json_body(request)
        return json_response(logs.update_settings(body))
    return json_response(logs.get_settings())
