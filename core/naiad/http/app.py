"""The aiohttp application: one error middleware and one flat route table.

Handlers only parse, call the :class:`~naiad.dataplane.DataPlane`, and serialise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..dataplane import DataPlane
from ..errors import InvalidArgument, NaiadError, Unavailable
from ..shm import ShmLease
from . import codec, extensions, legacy
from .common import DATAPLANE, MAX_INPUT, error_response, json_body, json_response

_json = json_response
_json_body = json_body

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_EMPTY_OK = web.Response(status=200)
_COMPRESS_IN_THREAD = 1 << 16
#: JSON request parts larger than this are parsed off the event loop
_JSON_IN_THREAD = 1 << 18


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except NaiadError as exc:
        headers = {"Accept-Encoding": "gzip, deflate"} if "compression" in exc.message else None
        return error_response(int(exc.status), exc.message, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:  # the server keeps serving whatever a handler did
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


def _version(request: web.Request) -> int:
    return codec.parse_model_version(request.match_info.get("version"))


# ---- health and metadata ------------------------------------------------------------------------


async def health_live(request: web.Request) -> web.Response:
    dp = request.app[DATAPLANE]
    if dp.exiting:
        raise Unavailable("Server exiting")
    return web.Response(status=200 if dp.live() else 400)


async def health_ready(request: web.Request) -> web.Response:
    dp = request.app[DATAPLANE]
    if dp.exiting:
        raise Unavailable("Server exiting")
    return web.Response(status=200 if dp.ready() else 400)


async def server_metadata(request: web.Request) -> web.Response:
    return _json(request.app[DATAPLANE].server_metadata())


async def model_ready(request: web.Request) -> web.Response:
    dp = request.app[DATAPLANE]
    dp.resolve(request.match_info["model"], _version(request))
    return web.Response(status=200)


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
    mv = dp.resolve(name, version)
    body = await request.read()
    headers = request.headers
    encoding = headers.get("Content-Encoding")
    if encoding and encoding != "identity":
        limit = request.app[MAX_INPUT]
        if len(body) > _COMPRESS_IN_THREAD:
            body = await asyncio.to_thread(codec.decompress, body, encoding, limit)
        else:
            body = codec.decompress(body, encoding, limit)
    header_length = codec.parse_header_length(
        headers.get("Inference-Header-Content-Length"), len(body)
    )
    raw_input = _raw_input(mv) if header_length == 0 else None
    lease = dp.shm.lease()
    try:
        payload, json_length = await _run_infer(
            dp, mv, lease, body, header_length, name, version, raw_input
        )
    finally:
        lease.release()  # after the request's arrays over shared memory are gone
    out_headers = {}
    if json_length is not None:
        out_headers["Inference-Header-Content-Length"] = str(json_length)
        content_type = "application/octet-stream"
    else:
        content_type = "application/json"
    accept = headers.get("Accept-Encoding")
    if accept:
        chosen = codec.choose_encoding(accept)
        if chosen is not None:
            if len(payload) > _COMPRESS_IN_THREAD:
                payload = await asyncio.to_thread(codec.compress, payload, chosen)
            else:
                payload = codec.compress(payload, chosen)
            out_headers["Content-Encoding"] = chosen
    return web.Response(body=payload, headers=out_headers, content_type=content_type)


async def _run_infer(
    dp: DataPlane,
    mv,
    lease: ShmLease,
    body: bytes,
    header_length: int | None,
    name: str,
    version: int,
    raw_input: tuple[str, str, list[int]] | None,
) -> tuple[bytes, int | None]:
    """Parse, infer and encode; shared-memory regions are read and written through ``lease``.

    A large JSON part (an image sent as JSON numbers, say) is parsed and its answer encoded on
    a worker thread, so one big request never stalls the event loop.
    """
    json_size = len(body) if header_length is None else header_length
    big = json_size > _JSON_IN_THREAD
    args = (body, header_length, name, version)
    kwargs = {"shm_reader": lease.read, "raw_input": raw_input}
    if big:
        req = await asyncio.to_thread(codec.parse_infer_request, *args, **kwargs)
    else:
        req = codec.parse_infer_request(*args, **kwargs)
    lease.reserve(req.outputs)
    response = await dp.infer(req, mv)
    if big:
        return await asyncio.to_thread(
            codec.encode_infer_response, req, response, shm_writer=lease.write
        )
    return codec.encode_infer_response(req, response, shm_writer=lease.write)


def _raw_input(mv) -> tuple[str, str, list[int]] | None:
    sig = mv.signature
    if len(sig.inputs) != 1:
        return None
    spec = next(iter(sig.inputs.values()))
    dims = list(spec.dims)
    if spec.datatype != "BYTES" and dims.count(-1) > 1:
        return None
    shape = ([1] if sig.max_batch_size > 0 else []) + dims
    return spec.name, spec.datatype, shape


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
    files = {k[5:]: v for k, v in params.items() if k.startswith("file:")}
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
