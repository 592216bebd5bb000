"""The aiohttp application: one error middleware and one flat route table.

Handlers only parse, call the :class:`~naiad.dataplane.DataPlane`, and serialise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..dataplane import DataPlane
from ..errors import InvalidArgument, NaiadError
from ..overrides import decode_base64_files
from . import codec, extensions, generate, handlers, legacy
from .common import (
    DATAPLANE,
    MAX_INPUT,
    answer_response,
    error_response,
    json_body,
    json_response,
    read_body,
    too_large_response,
)

_json = json_response
_json_body = json_body

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.content_length is not None and request.content_length > request.app[MAX_INPUT]:
        return too_large_response(request.content_length, request.app[MAX_INPUT])
    try:
        return await handler(request)
    except NaiadError as exc:
        return answer_response(handlers.naiad_error_answer(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:  # the server keeps serving whatever a handler did
        return answer_response(handlers.internal_error_answer(exc, request.method, request.path))


def _version(request: web.Request) -> int:
    return codec.parse_model_version(request.match_info.get("version"))


# ---- health and metadata ------------------------------------------------------------------------


async def health_live(request: web.Request) -> web.Response:
    return web.Response(status=handlers.health_status(request.app[DATAPLANE], ready=False))


async def health_ready(request: web.Request) -> web.Response:
    return web.Response(status=handlers.health_status(request.app[DATAPLANE], ready=True))


async def server_metadata(request: web.Request) -> web.Response:
    return _json(request.app[DATAPLANE].server_metadata())


async def model_ready(request: web.Request) -> web.Response:
    answer = handlers.model_ready_answer(
        request.app[DATAPLANE], request.match_info["model"], _version(request)
    )
    return answer_response(answer if isinstance(answer, tuple) else await answer)


async def model_metadata(request: web.Request) -> web.Response:
    dp = request.app[DATAPLANE]
    return _json(dp.model_metadata(request.match_info["model"], _version(request)))


async def model_config(request: web.Request) -> web.Response:
    dp = request.app[DATAPLANE]
    return _json(dp.model_config(request.match_info["model"], _version(request)))


async def model_stats(request: web.Request) -> web.Response:
    dp = request.app[DATAPLANE]
    return _json(dp.statistics(request.match_info.get("model", ""), _version(request)))


# ---- inference --------------------------------------------------------------------------------


async def infer(request: web.Request) -> web.Response:
    dp = request.app[DATAPLANE]
    name = request.match_info["model"]
    version = _version(request)
    mv = dp.resolve(name, version)  # an unknown model fails before its body is read
    headers = request.headers
    # received before an unload, so served (see ModelRegistry): counted while its body arrives;
    # handlers.infer counts it from its first step on, with no await in between
    mv.arriving += 1
    try:
        body = await read_body(request)
    finally:
        mv.arriving -= 1
    status, payload, content_type, out_headers = await handlers.infer(
        dp,
        mv,
        name,
        version,
        body,
        max_input=request.app[MAX_INPUT],
        content_encoding=headers.get("Content-Encoding"),
        header_length=headers.get("Inference-Header-Content-Length"),
        accept_encoding=headers.get("Accept-Encoding"),
    )
    return web.Response(status=status, body=payload, headers=out_headers, content_type=content_type)


# ---- model repository ---------------------------------------------------------------------------


async def repository_index(request: web.Request) -> web.Response:
    body = await _json_body(request)
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidArgument("'ready' must be a boolean")
    return _json(request.app[DATAPLANE].repository_index(ready))


async def repository_load(request: web.Request) -> web.Response:
    body = await _json_body(request)
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidArgument("'parameters' must be a JSON object")
    config = params.get("config")
    if config is not None and not isinstance(config, (str, dict)):
        raise InvalidArgument("parameter 'config' must be a JSON string")
    files = decode_base64_files({k[5:]: v for k, v in params.items() if k.startswith("file:")})
    await request.app[DATAPLANE].load_model(request.match_info["model"], config, files or None)
    return web.Response(status=200)


async def repository_unload(request: web.Request) -> web.Response:
    body = await _json_body(request)
    params = body.get("parameters") or {}
    dependents = params.get("unload_dependents", False) if isinstance(params, dict) else False
    if not isinstance(dependents, bool):
        raise InvalidArgument("'unload_dependents' must be a boolean")
    await request.app[DATAPLANE].unload_model(request.match_info["model"], dependents)
    return web.Response(status=200)


async def repository_named_unsupported(request: web.Request) -> web.Response:
    return error_response(501, "'repository_name' specification is not supported")


# ---- the route table ----------------------------------------------------------------------------

_M = "/v2/models/{model}"
_MV = "/v2/models/{model}/versions/{version:[0-9]+}"
_SHM = "/v2/systemsharedmemory"
_CUDA = "/v2/cudasharedmemory"


def routes() -> list[web.RouteDef]:
    """Every V2 route, top to bottom. Inference comes first: aiohttp tries routes in order."""
    table = [
        web.post(_M + "/infer", infer),
        web.post(_MV + "/infer", infer),
        web.post(_M + "/generate", generate.generate),
        web.post(_MV + "/generate", generate.generate),
        web.post(_M + "/generate_stream", generate.generate_stream),
        web.post(_MV + "/generate_stream", generate.generate_stream),
        web.get("/v2/health/live", health_live),
        web.get("/v2/health/ready", health_ready),
        web.get("/v2", server_metadata),
        web.get("/v2/models/stats", model_stats),
        web.post("/v2/repository/index", repository_index),
        web.post("/v2/repository/{repo}/index", repository_index),
        web.post("/v2/repository/models/{model}/load", repository_load),
        web.post("/v2/repository/models/{model}/unload", repository_unload),
        web.post("/v2/repository/{repo}/models/{model}/load", repository_named_unsupported),
        web.post("/v2/repository/{repo}/models/{model}/unload", repository_named_unsupported),
    ]
    for prefix in (_M, _MV):
        table += [
            web.get(prefix, model_metadata),
            web.get(prefix + "/ready", model_ready),
            web.get(prefix + "/config", model_config),
            web.get(prefix + "/stats", model_stats),
        ]
    table += [
        # system shared memory; CUDA shared memory answers as a GPU-less Triton does
        web.get(_SHM + "/status", extensions.shm_status),
        web.get(_SHM + "/region/{region}/status", extensions.shm_status),
        web.post(_SHM + "/region/{region}/register", extensions.shm_register),
        web.post(_SHM + "/unregister", extensions.shm_unregister),
        web.post(_SHM + "/region/{region}/unregister", extensions.shm_unregister),
        web.get(_CUDA + "/status", extensions.cuda_shm_status),
        web.get(_CUDA + "/region/{region}/status", extensions.cuda_shm_status),
        web.post(_CUDA + "/region/{region}/register", extensions.cuda_shm_register),
        web.post(_CUDA + "/unregister", extensions.cuda_shm_unregister),
        web.post(_CUDA + "/region/{region}/unregister", extensions.cuda_shm_unregister),
        # trace settings (stored, not acted on) and logging settings
        web.get("/v2/trace/setting", extensions.trace_setting),
        web.post("/v2/trace/setting", extensions.trace_setting),
        web.get(_M + "/trace/setting", extensions.trace_setting),
        web.post(_M + "/trace/setting", extensions.trace_setting),
        web.get("/v2/logging", extensions.log_setting),
        web.post("/v2/logging", extensions.log_setting),
        # the legacy TRTIS v1 API: NV-Status on every answer, bare 400 for unknown /api paths
        web.route("*", "/api/health/{mode}", legacy.health),
        web.route("*", "/api/status", legacy.status),
        web.route("*", "/api/status/{model}", legacy.status),
        web.route("*", "/api/infer/{model}", legacy.infer),
        web.route("*", "/api/infer/{model}/{version:[0-9]+}", legacy.infer),
        web.route("*", "/api/modelcontrol/{action:load|unload}/{model}", legacy.model_control),
        web.route("*", "/api/sharedmemorycontrol/{tail:.*}", legacy.shm_control),
        web.route("*", "/api/repository/index", legacy.repository_index),
        web.route("*", "/api{tail:(/.*)?}", legacy.unknown),
    ]
    return table


def make_app(dataplane: DataPlane, *, max_input_size: int = 64 * 1024 * 1024) -> web.Application:
    """The HTTP application for one data plane."""
    app = web.Application(middlewares=[error_middleware], client_max_size=max_input_size)
    app[DATAPLANE] = dataplane
    app[MAX_INPUT] = max_input_size
    app[legacy.LEGACY] = legacy.LegacyState()
    app.add_routes(routes())
    return app
