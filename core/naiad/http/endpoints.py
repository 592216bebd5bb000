"""The endpoint table: every HTTP route naiad serves, written once.

Both fronts serve this table (:mod:`naiad.http.edge`): the aiohttp app registers every entry
in order (aiohttp tries routes top to bottom), and the lean front answers the entries marked
``lean`` from lookups it derives from them at start. Handlers here take the edge and a
transport-free request and return an answer; they parse, call the
:class:`~naiad.dataplane.DataPlane`, and serialise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from ..errors import InvalidArgument
from ..forwarding import forward_headers
from ..inference import InferRequest
from ..overrides import decode_base64_files
from . import codec, extensions, generate, handlers, legacy
from .edge import Edge, Endpoint, Request
from .handlers import Answer

_EMPTY: Answer = (200, b"", None, None)


def _version(req: Request) -> int:
    return codec.parse_model_version(req.params.get("version"))


# ---- health and metadata ------------------------------------------------------------------------


def health_live(edge: Edge, req: Request) -> Answer:
    return handlers.health_status(edge.dataplane, ready=False), b"", None, None


def health_ready(edge: Edge, req: Request) -> Answer:
    return handlers.health_status(edge.dataplane, ready=True), b"", None, None


def server_metadata(edge: Edge, req: Request) -> Answer:
    return handlers.json_answer(edge.dataplane.server_metadata())


def model_ready(edge: Edge, req: Request) -> Answer | Awaitable[Answer]:
    """At once from the registry; an awaitable answer for a model that checks its own
    readiness (a Triton model's ``is_ready``, run off the loop)."""
    return handlers.model_ready_answer(edge.dataplane, req.params["model"], _version(req))


def model_metadata(edge: Edge, req: Request) -> Answer:
    return handlers.json_answer(edge.dataplane.model_metadata(req.params["model"], _version(req)))


def model_config(edge: Edge, req: Request) -> Answer:
    return handlers.json_answer(edge.dataplane.model_config(req.params["model"], _version(req)))


def model_stats(edge: Edge, req: Request) -> Answer:
    name = req.params.get("model", "")
    return handlers.json_answer(edge.dataplane.statistics(name, _version(req)))


# ---- inference ----------------------------------------------------------------------------------


async def infer(edge: Edge, req: Request) -> Answer:
    dp = edge.dataplane
    params = req.params
    name = params["model"]
    text = params.get("version")
    version = codec.parse_model_version(text) if text else -1  # _version, written out
    mv = dp.resolve(name, version)  # an unknown model fails before its body is read
    body = req.body
    if body is None:
        # received before an unload, so served (see ModelRegistry): counted while its body
        # arrives; handlers.infer counts it from its first step on, with no await in between
        mv.arriving += 1
        try:
            body = await req.read()
        finally:
            mv.arriving -= 1
    headers = req.headers
    return await handlers.infer(
        dp,
        mv,
        name,
        version,
        body,
        max_input=edge.max_input,
        content_encoding=headers.get("content-encoding"),
        header_length=headers.get("inference-header-content-length"),
        accept_encoding=headers.get("accept-encoding"),
        plans=edge.plans.of(mv),
        forward=_forwarder(edge, headers) if edge.forward_pattern is not None else None,
    )


def _forwarder(edge: Edge, headers: Mapping[str, str]) -> Callable[[InferRequest], None] | None:
    """What ``--http-header-forward-pattern`` adds to the request (names in lower case, as
    HTTP's are case-insensitive); None when the flag is unset."""
    pattern = edge.forward_pattern
    if pattern is None:
        return None
    items = [(key.lower(), value) for key, value in headers.items()]
    return lambda request: forward_headers(request, items, pattern)


# ---- model repository ---------------------------------------------------------------------------


def repository_index(edge: Edge, req: Request) -> Answer:
    ready = req.json().get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidArgument("'ready' must be a boolean")
    return handlers.json_answer(edge.dataplane.repository_index(ready))


async def repository_load(edge: Edge, req: Request) -> Answer:
    await req.read()
    params = req.json().get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidArgument("'parameters' must be a JSON object")
    config = params.get("config")
    if config is not None and not isinstance(config, (str, dict)):
        raise InvalidArgument("parameter 'config' must be a JSON string")
    files = decode_base64_files({k[5:]: v for k, v in params.items() if k.startswith("file:")})
    await edge.dataplane.load_model(req.params["model"], config, files or None)
    return _EMPTY


async def repository_unload(edge: Edge, req: Request) -> Answer:
    await req.read()
    params = req.json().get("parameters") or {}
    dependents = params.get("unload_dependents", False) if isinstance(params, dict) else False
    if not isinstance(dependents, bool):
        raise InvalidArgument("'unload_dependents' must be a boolean")
    await edge.dataplane.unload_model(req.params["model"], dependents)
    return _EMPTY


def repository_named_unsupported(edge: Edge, req: Request) -> Answer:
    return handlers.error_answer(501, "'repository_name' specification is not supported")


# ---- the table ----------------------------------------------------------------------------------

_M = "/v2/models/{model}"
_MV = "/v2/models/{model}/versions/{version:[0-9]+}"
_SHM = "/v2/systemsharedmemory"
_CUDA = "/v2/cudasharedmemory"


def _table() -> list[Endpoint]:
    """Every route, top to bottom. Inference comes first: aiohttp tries routes in order."""
    e = Endpoint
    table = [
        e("POST", _M + "/infer", infer, "inference", lean=True),
        e("POST", _MV + "/infer", infer, "inference", lean=True),
        e("POST", _M + "/generate", generate.generate, "inference"),
        e("POST", _MV + "/generate", generate.generate, "inference"),
        e("POST", _M + "/generate_stream", generate.generate_stream, "inference", aiohttp=True),
        e("POST", _MV + "/generate_stream", generate.generate_stream, "inference", aiohttp=True),
        e("GET", "/v2/health/live", health_live, "health", lean=True),
        e("GET", "/v2/health/ready", health_ready, "health", lean=True),
        e("GET", "/v2", server_metadata, "metadata", lean=True),
        e("GET", "/v2/models/stats", model_stats, "statistics", lean=True),
        e("POST", "/v2/repository/index", repository_index, "model-repository"),
        e("POST", "/v2/repository/{repo}/index", repository_index, "model-repository"),
        e("POST", "/v2/repository/models/{model}/load", repository_load, "model-repository"),
        e("POST", "/v2/repository/models/{model}/unload", repository_unload, "model-repository"),
        e(
            "POST",
            "/v2/repository/{repo}/models/{model}/load",
            repository_named_unsupported,
            "model-repository",
        ),
        e(
            "POST",
            "/v2/repository/{repo}/models/{model}/unload",
            repository_named_unsupported,
            "model-repository",
        ),
    ]
    for prefix in (_M, _MV):
        table += [
            e("GET", prefix, model_metadata, "metadata", lean=True),
            e("GET", prefix + "/ready", model_ready, "health", lean=True),
            e("GET", prefix + "/config", model_config, "model-config", lean=True),
            e("GET", prefix + "/stats", model_stats, "statistics", lean=True),
        ]
    x, _SM = extensions, "shared-memory"
    table += [
        # system shared memory; CUDA shared memory answers as a GPU-less Triton does
        e("GET", _SHM + "/status", x.shm_status, _SM),
        e("GET", _SHM + "/region/{region}/status", x.shm_status, _SM),
        e("POST", _SHM + "/region/{region}/register", x.shm_register, _SM),
        e("POST", _SHM + "/unregister", x.shm_unregister, _SM),
        e("POST", _SHM + "/region/{region}/unregister", x.shm_unregister, _SM),
        e("GET", _CUDA + "/status", x.cuda_shm_status, _SM),
        e("GET", _CUDA + "/region/{region}/status", x.cuda_shm_status, _SM),
        e("POST", _CUDA + "/region/{region}/register", x.cuda_shm_register, _SM),
        e("POST", _CUDA + "/unregister", x.cuda_shm_unregister, _SM),
        e("POST", _CUDA + "/region/{region}/unregister", x.cuda_shm_unregister, _SM),
        # trace settings (stored, not acted on) and logging settings
        e("GET", "/v2/trace/setting", x.trace_setting, "trace"),
        e("POST", "/v2/trace/setting", x.trace_setting, "trace"),
        e("GET", _M + "/trace/setting", x.trace_setting, "trace"),
        e("POST", _M + "/trace/setting", x.trace_setting, "trace"),
        e("GET", "/v2/logging", x.log_setting, "logging"),
        e("POST", "/v2/logging", x.log_setting, "logging"),
    ]
    # the legacy TRTIS v1 API: NV-Status on every answer, bare 400 for unknown /api paths
    lg = legacy
    table += [
        e("*", "/api/health/{mode}", lg.health, "health", aiohttp=True),
        e("*", "/api/status", lg.status, "metadata", aiohttp=True),
        e("*", "/api/status/{model}", lg.status, "metadata", aiohttp=True),
        e("*", "/api/infer/{model}", lg.infer, "inference", aiohttp=True),
        e("*", "/api/infer/{model}/{version:[0-9]+}", lg.infer, "inference", aiohttp=True),
        e(
            "*",
            "/api/modelcontrol/{action:load|unload}/{model}",
            lg.model_control,
            "model-repository",
            aiohttp=True,
        ),
        e("*", "/api/sharedmemorycontrol/{tail:.*}", lg.shm_control, "shared-memory", aiohttp=True),
        e("*", "/api/repository/index", lg.repository_index, "model-repository", aiohttp=True),
        e("*", "/api{tail:(/.*)?}", lg.unknown, "", aiohttp=True),
    ]
    return table


ENDPOINTS: list[Endpoint] = _table()
