"""The legacy TRTIS v1 HTTP API (``/api/*``), served on the V2 port through the same data plane.

What differs from V2 is only the edge: the outcome of every call travels in an ``NV-Status``
header (protobuf short text of a ``RequestStatus``), HTTP status is 200 on ``SUCCESS`` and 400
on anything else, an unknown ``/api`` path or a malformed ``NV-InferRequest`` is a bare 400, and
a wrong verb a bare 405 (shared/reference/trtis-v1-api.md). Inference builds the same
InferRequest as V2 and calls :meth:`DataPlane.infer <naiad.dataplane.DataPlane.infer>`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from .. import repository
from ..errors import (
    ErrorCode,
    InvalidArgument,
    ModelLoadError,
    NaiadError,
    NotFound,
    Unavailable,
)
from ..legacy_pb import (
    InferRequestHeader,
    InferResponseHeader,
    ModelRepositoryIndex,
    RequestStatus,
    RequestStatusCode,
)
from ..shm import ShmLease
from ..stats import Duration
from . import legacy_codec as lc
from .codec import parse_model_version
from .common import DATAPLANE

log = logging.getLogger(__name__)


@dataclass
class LegacyState:
    """Per-app state of the v1 API: request ids, uptime and the ServerStatus request counters."""

    started_ns: int = field(default_factory=time.monotonic_ns)
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    stats: dict[str, Duration] = field(default_factory=dict)


LEGACY = web.AppKey("legacy", LegacyState)

#: Triton's error codes that TRTIS 1.x had under the same name (others are UNKNOWN)
_CODES = {
    code: RequestStatusCode.Value(code.value)
    for code in ErrorCode
    if code.value in RequestStatusCode.keys()
}


class _BareBadRequest(Exception):
    """Answer 400 with no body and no NV-Status (unknown sub-path, malformed NV-InferRequest)."""


def nv_status(code: int, message: str, server_id: str, request_id: int) -> dict[str, str]:
    """The ``NV-Status`` header: a RequestStatus in short text (an empty msg is not printed)."""
    status = RequestStatus(
        code=code,  # type: ignore[arg-type]  # a RequestStatusCode number
        msg=message,
        server_id=server_id,
        request_id=request_id,
    )
    return {"NV-Status": lc.short_text(status)}


def _code(exc: NaiadError) -> int:
    """The v1 status code of an error: its Triton code, except that a failed load is INTERNAL
    ("failed to load '<m>', ..."), as TRTIS answered."""
    if isinstance(exc, ModelLoadError):
        return RequestStatusCode.INTERNAL
    return _CODES.get(exc.code, RequestStatusCode.UNKNOWN)


LegacyHandler = Callable[[web.Request, int], Awaitable[web.Response]]


def endpoint(*methods: str, stats: str | None = None) -> Callable[[LegacyHandler], Callable]:
    """Wrap a v1 handler: verb check, request id, ``NV-Status`` on every answer, counters.

    The handler gets ``(request, request_id)`` and returns the success response (without
    NV-Status) or raises a :class:`~naiad.errors.NaiadError`.
    """

    def wrap(handler: LegacyHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
        @functools.wraps(handler)
        async def run(request: web.Request) -> web.Response:
            if request.method not in methods:
                return web.Response(status=405)
            state = request.app[LEGACY]
            request_id = next(state.ids)
            server_id = request.app[DATAPLANE].options.server_id
            t0 = time.monotonic_ns()
            try:
                response = await handler(request, request_id)
            except _BareBadRequest:
                return web.Response(status=400)
            except NaiadError as exc:
                return web.Response(
                    status=400, headers=nv_status(_code(exc), exc.message, server_id, request_id)
                )
            except Exception as exc:  # the server keeps serving whatever a handler did
                log.exception("unhandled error in %s %s", request.method, request.path)
                message = f"internal error: {type(exc).__name__}: {exc}"
                return web.Response(
                    status=400,
                    headers=nv_status(RequestStatusCode.INTERNAL, message, server_id, request_id),
                )
            if response.status == 200 and stats is not None:
                state.stats.setdefault(stats, Duration()).add(time.monotonic_ns() - t0)
            if "NV-Status" not in response.headers:
                ok = nv_status(RequestStatusCode.SUCCESS, "", server_id, request_id)
                response.headers.update(ok)
            return response

        return run

    return wrap


def _form(request: web.Request) -> str:
    """``?format=binary|json|text``; JSON also for ``Accept: application/json`` (TRTIS)."""
    form = request.query.get("format", "")
    if form in ("binary", "json", "text"):
        return form
    if not form and "application/json" in request.headers.get("Accept", ""):
        return "json"
    return "text"


def _message(request: web.Request, message) -> web.Response:
    body, content_type = lc.serialize(message, _form(request))
    return web.Response(body=body, content_type=content_type)


# ---- health, status, repository ----------------------------------------------------------------


@endpoint("GET", stats="health")
async def health(request: web.Request, request_id: int) -> web.Response:
    dp = request.app[DATAPLANE]
    mode = request.match_info["mode"]
    if mode not in ("live", "ready"):
        raise _BareBadRequest
    if dp.exiting:
        raise Unavailable("Server exiting")
    ok = dp.live() if mode == "live" else dp.ready()
    return web.Response(status=200 if ok else 400)


@endpoint("GET", stats="status")
async def status(request: web.Request, request_id: int) -> web.Response:
    dp = request.app[DATAPLANE]
    state = request.app[LEGACY]
    uptime = time.monotonic_ns() - state.started_ns
    message = lc.server_status(dp, request.match_info.get("model", ""), uptime, state.stats)
    return _message(request, message)


@endpoint("GET", stats="repository")
async def repository_index(request: web.Request, request_id: int) -> web.Response:
    dp = request.app[DATAPLANE]
    scan = await asyncio.to_thread(repository.scan_repositories, dp.models.repositories)
    index = ModelRepositoryIndex()
    for name in sorted(scan.models):
        index.models.add(name=name)
    return _message(request, index)


# ---- model control ------------------------------------------------------------------------------


@endpoint("POST", stats="model_control")
async def model_control(request: web.Request, request_id: int) -> web.Response:
    dp = request.app[DATAPLANE]
    name = request.match_info["model"]
    if request.match_info["action"] == "load":
        await dp.load_model(name)
    else:
        await dp.unload_model(name)
    return web.Response(status=200)


# ---- shared memory control ----------------------------------------------------------------------


@endpoint("GET", "POST", stats="shm_control")
async def shm_control(request: web.Request, request_id: int) -> web.Response:
    """``register/<name>/<key>/<offset>/<byte_size>`` (the key keeps its '/', hence ``//``),
    ``cudaregister/<name>/<byte_size>/<device_id>``, ``unregister/<name>``,
    ``unregisterall`` and ``status``."""
    dp = request.app[DATAPLANE]
    parts = request.match_info["tail"].split("/")
    action = parts[0]
    if action == "status" and len(parts) == 1:
        if request.method != "GET":
            return web.Response(status=405)
        return _message(request, lc.shm_status(dp))
    if request.method != "POST":
        return web.Response(status=405)
    dp.check_client_shm()
    if action == "register" and len(parts) >= 5:
        name, key = parts[1], "/".join(parts[2:-2])
        dp.shm_register(name, key, _number(parts[-2]), _number(parts[-1]))
    elif action == "cudaregister" and len(parts) == 4:
        dp.cuda_shm_register(parts[1])
    elif action == "unregister" and len(parts) == 2 and parts[1]:
        dp.shm_unregister(parts[1])
    elif action == "unregisterall" and len(parts) == 1:
        dp.shm_unregister()
    else:
        raise _BareBadRequest
    return web.Response(status=200)


def _number(text: str) -> int:
    if not text.isdigit():
        raise InvalidArgument(f"expected a non-negative integer in the path, got '{text}'")
    return int(text)


# ---- inference ----------------------------------------------------------------------------------


@endpoint("POST")
async def infer(request: web.Request, request_id: int) -> web.Response:
    dp = request.app[DATAPLANE]
    try:
        header = lc.parse_request_header(request.headers.get("NV-InferRequest"))
    except lc.MalformedHeader as exc:
        log.debug("malformed NV-InferRequest: %s", exc)
        raise _BareBadRequest from exc
    name = request.match_info["model"]
    version = parse_model_version(request.match_info.get("version"))
    lease = dp.shm.lease()
    try:
        out_header, blobs = await _infer(request, header, name, version, lease)
    except NaiadError as exc:
        headers = nv_status(_code(exc), exc.message, dp.options.server_id, request_id)
        headers["NV-InferResponse"] = lc.short_text(InferResponseHeader(id=header.id))
        return web.Response(status=400, headers=headers)
    finally:
        lease.release()
    form = "binary" if request.query.get("format") == "binary" else "text"
    trailer, _ = lc.serialize(out_header, form)
    return web.Response(
        body=b"".join([*blobs, trailer]),
        content_type="application/octet-stream",
        headers={"NV-InferResponse": lc.short_text(out_header)},
    )


async def _infer(
    request: web.Request, header: InferRequestHeader, name: str, version: int, lease: ShmLease
) -> tuple[InferResponseHeader, list[bytes | memoryview]]:
    """Resolve, build the InferRequest, run it through the data plane, encode the answer."""
    dp = request.app[DATAPLANE]
    try:
        mv = dp.resolve(name, version)
    except NotFound as exc:
        if dp.models.versions(name):
            raise
        raise Unavailable(f"Inference request for unknown model '{name}'") from exc
    body = await request.read()
    req = lc.build_request(header, body, mv, name, version, lease)
    lease.reserve(req.outputs)
    response = await dp.infer(req, mv)
    return lc.encode_response(header, req, response, mv, lease.write)


@endpoint("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS")
async def unknown(request: web.Request, request_id: int) -> web.Response:
    """Any other ``/api/...`` path: TRTIS answers 400 with an empty body."""
    raise _BareBadRequest
