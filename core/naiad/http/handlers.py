"""The V2 answers as plain values, for the endpoint table's handlers (``endpoints.py``) that both
HTTP fronts serve (``app.py``, ``fast.py``), so both send the same bytes for the same request.

An answer is ``(status, body, content_type, extra_headers)``. Errors are raised as
:class:`~naiad.errors.NaiadError` and turned into Triton's ``{"error": "..."}`` form by
:func:`error_answer`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from .. import memory
from ..dataplane import DataPlane
from ..errors import InvalidArgument, NaiadError, Unsupported
from ..inference import InferRequest
from ..plans import BinaryPlan
from ..plans import find as find_plan
from . import codec

log = logging.getLogger(__name__)

JSON = "application/json"
BINARY = "application/octet-stream"

#: (status, body, content type or None for none, extra headers or None)
Answer = tuple[int, bytes, "str | None", "dict[str, str] | None"]

#: bodies larger than this are (de)compressed off the event loop
COMPRESS_IN_THREAD = 1 << 16
#: JSON request parts larger than this are parsed off the event loop
JSON_IN_THREAD = 1 << 18
#: a request's tensors may take this many times ``--http-max-input-size`` once decoded
MAX_DECODED_FACTOR = 4


def error_answer(status: int, message: str, headers: dict[str, str] | None = None) -> Answer:
    """Triton's error form: ``{"error": "..."}`` with a JSON content type."""
    return status, orjson.dumps({"error": message}), JSON, headers


def too_large_message(size: int, limit: int) -> str:
    """Why a body of ``size`` bytes is refused (413), from its head, before it is read."""
    return (
        f"request body of {size} bytes exceeds the limit of {limit} bytes (--http-max-input-size)"
    )


def naiad_error_answer(exc: NaiadError) -> Answer:
    headers = (
        {"Accept-Encoding": "gzip, deflate"} if isinstance(exc, codec.UnsupportedEncoding) else None
    )
    return error_answer(int(exc.status), exc.message, headers)


def internal_error_answer(exc: BaseException, method: str, path: str) -> Answer:
    """A handler raised something unexpected: log it, answer 500, keep serving."""
    log.error("unhandled error in %s %s", method, path, exc_info=exc)
    return error_answer(500, f"internal error: {type(exc).__name__}: {exc}")


def json_answer(obj: Any) -> Answer:
    return 200, orjson.dumps(obj), JSON, None


def json_object(raw: bytes | memoryview) -> dict:
    """An optional JSON object body (empty body = {})."""
    if not bytes(raw).strip():
        return {}
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"failed to parse the request JSON buffer: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return obj


#: Triton's answer for a loaded model whose instances say they are not ready
NOT_READY = error_answer(400, "Model version not ready")
READY: Answer = (200, b"", None, None)


def model_ready_answer(dp: DataPlane, name: str, version: int) -> Answer | Awaitable[Answer]:
    """``GET /v2/models/{m}/ready``: the answer, or (a model that checks its own readiness) an
    awaitable of it. Unknown models raise Triton's errors."""
    mv = dp.resolve(name, version)
    now = dp.model_ready_now(mv)
    if now is None:
        return _model_ready_later(dp, name, version)
    return READY if now else NOT_READY


async def _model_ready_later(dp: DataPlane, name: str, version: int) -> Answer:
    return READY if await dp.model_ready_checked(name, version) else NOT_READY


def health_status(dp: DataPlane, ready: bool) -> int:
    """200 or 400, as Triton answers ``/v2/health/live`` and ``/v2/health/ready``."""
    return 200 if dp.health(ready) else 400


def infer(
    dp: DataPlane,
    mv: Any,
    name: str,
    version: int,
    body: bytes | memoryview,
    *,
    max_input: int,
    content_encoding: str | None,
    header_length: str | None,
    accept_encoding: str | None,
    plans: dict[bytes, BinaryPlan] | None = None,
    forward: Callable[[InferRequest], None] | None = None,
) -> Awaitable[Answer]:
    """One V2 inference: ``body`` as received; awaiting the result gives the answer to send.

    A large JSON part (an image sent as JSON numbers, say) is parsed and its answer encoded on a
    worker thread, and large bodies are (de)compressed there, so one big request never stalls
    the event loop. ``plans`` is the edge's cache of ``mv``'s binary headers
    (:mod:`naiad.plans`): a request built from a header validated before is not validated
    again. ``forward`` adds the forwarded headers' parameters (:mod:`naiad.forwarding`).

    Not a coroutine function itself: it picks the path (a planned binary header, or the
    general parse) and returns that path's coroutine, so a request awaits one frame fewer.
    """
    if mv.decoupled:
        raise Unsupported("HTTP end point doesn't support models with decoupled transaction policy")
    if (
        plans
        and header_length is not None
        and (not content_encoding or content_encoding == "identity")
    ):
        length = codec.parse_header_length(header_length, len(body))
        plan = find_plan(plans, body, length) if length else None
        if plan is not None and length:
            return _infer_planned(
                dp, mv, name, version, body, length, plan, accept_encoding, forward
            )
    return _infer_parsed(
        dp,
        mv,
        name,
        version,
        body,
        max_input,
        content_encoding,
        header_length,
        accept_encoding,
        plans,
        forward,
    )


async def _infer_parsed(
    dp: DataPlane,
    mv: Any,
    name: str,
    version: int,
    body: bytes | memoryview,
    max_input: int,
    content_encoding: str | None,
    header_length: str | None,
    accept_encoding: str | None,
    plans: dict[bytes, BinaryPlan] | None,
    forward: Callable[[InferRequest], None] | None,
) -> Answer:
    """:func:`infer` of a body parsed in full (JSON, compressed, shared memory, a new header)."""
    mv.arriving += 1  # an unload from now on waits for this request (see ModelRegistry)
    lease = dp.shm.lease()
    try:
        if content_encoding and content_encoding != "identity":
            if len(body) > COMPRESS_IN_THREAD:
                body = await asyncio.to_thread(codec.decompress, body, content_encoding, max_input)
            else:
                body = codec.decompress(body, content_encoding, max_input)
        length = codec.parse_header_length(header_length, len(body))
        raw_input = _raw_input(mv) if length == 0 else None
        json_size = len(body) if length is None else length
        big = json_size > JSON_IN_THREAD
        kwargs: dict[str, Any] = {
            "shm_reader": lease.read,
            "raw_input": raw_input,
            "plans": plans,
            "max_decoded": MAX_DECODED_FACTOR * max_input,
        }
        if big:
            req, plan = await asyncio.to_thread(
                codec.parse_infer_request, body, length, name, version, **kwargs
            )
        else:
            req, plan = codec.parse_infer_request(body, length, name, version, **kwargs)
        if forward is not None:  # --http-header-forward-pattern
            forward(req)
        lease.reserve(req.outputs)
        sig = mv.signature
        validated = plan is not None and plan.validated(sig)
        response = await dp.infer(req, mv, validated=validated)
        if plan is not None and not validated:
            plan.accepted(sig, req)
        req.inputs = {}  # the answer is encoded without them: free them first
        if big:
            payload, json_length = await asyncio.to_thread(
                codec.encode_infer_response, req, response, shm_writer=lease.write
            )
        else:
            payload, json_length = codec.encode_infer_response(
                req, response, shm_writer=lease.write
            )
    finally:
        mv.arriving -= 1
        lease.release()  # after the request's arrays over shared memory are gone
        if len(body) >= memory.TRIM_FROM:
            memory.trim_soon()
    if accept_encoding:
        return await _compressed(payload, json_length, accept_encoding)
    return _infer_answer(payload, json_length)


async def _infer_planned(
    dp: DataPlane,
    mv: Any,
    name: str,
    version: int,
    body: bytes | memoryview,
    length: int,
    plan: BinaryPlan,
    accept_encoding: str | None,
    forward: Callable[[InferRequest], None] | None,
) -> Answer:
    """:func:`infer` of a body whose binary header has a plan: its tensors are sliced out of
    the binary part, and neither inputs nor outputs use shared memory (see ``plannable``)."""
    mv.arriving += 1  # an unload from now on waits for this request (see ModelRegistry)
    try:
        req = plan.build(memoryview(body)[length:], name, version)
        if forward is not None:  # --http-header-forward-pattern
            forward(req)
        sig = mv.signature
        validated = plan.validated(sig)
        response = await dp.infer(req, mv, validated=validated)
        if not validated:
            plan.accepted(sig, req)
        req.inputs = {}  # the answer is encoded without them: free them first
        payload, json_length = codec.encode_infer_response(req, response, heads=plan.heads)
    finally:
        mv.arriving -= 1
        if len(body) >= memory.TRIM_FROM:
            memory.trim_soon()
    if accept_encoding:
        return await _compressed(payload, json_length, accept_encoding)
    return _infer_answer(payload, json_length)


def _infer_answer(payload: bytes, json_length: int | None) -> Answer:
    if json_length is None:
        return 200, payload, JSON, None
    return 200, payload, BINARY, {"Inference-Header-Content-Length": str(json_length)}


async def _compressed(payload: bytes, json_length: int | None, accept_encoding: str) -> Answer:
    """The answer, compressed as ``Accept-Encoding`` asks (large ones off the event loop)."""
    status, payload, content_type, headers = _infer_answer(payload, json_length)
    chosen = codec.choose_encoding(accept_encoding)
    if chosen is not None:
        if len(payload) > COMPRESS_IN_THREAD:
            payload = await asyncio.to_thread(codec.compress, payload, chosen)
        else:
            payload = codec.compress(payload, chosen)
        headers = {**(headers or {}), "Content-Encoding": chosen}
    return status, payload, content_type, headers


def _raw_input(mv: Any) -> tuple[str, str, list[int]] | None:
    """The one input a body without a JSON header is for (Triton's raw binary request)."""
    sig = mv.signature
    if len(sig.inputs) != 1:
        return None
    spec = next(iter(sig.inputs.values()))
    dims = list(spec.dims)
    if spec.datatype != "BYTES" and dims.count(-1) > 1:
        return None
    shape = ([1] if sig.max_batch_size > 0 else []) + dims
    return spec.name, spec.datatype, shape
