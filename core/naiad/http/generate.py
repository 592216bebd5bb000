"""Triton's generate extension: ``POST /v2/models/{m}[/versions/{v}]/generate`` (one JSON answer)
and ``.../generate_stream`` (server-sent events, one ``data:`` event per response).

The request is a flat JSON object: each key but ``parameters`` is an input of the model (a
scalar or a list, strings for BYTES); ``parameters`` become request parameters. Each response is
``{"model_name", "model_version", <output>: value...}`` with one-element outputs as scalars.
Both routes are built on :meth:`naiad.dataplane.DataPlane.infer_stream`, so decoupled models
stream through them; a client that goes away cancels its request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from aiohttp import web

from ..errors import InvalidArgument, NaiadError
from ..inference import InferRequest, InferResponse
from . import codec
from .common import DATAPLANE, json_body
from .handlers import Answer, json_answer

if TYPE_CHECKING:
    from .edge import Edge, Request

SSE = "text/event-stream; charset=utf-8"


def _target(request: web.Request) -> tuple[str, int]:
    return request.match_info["model"], codec.parse_model_version(request.match_info.get("version"))


def build_request(mv: Any, name: str, version: int, body: dict) -> InferRequest:
    """A generate request body as an :class:`InferRequest` for ``mv``."""
    sig = mv.signature
    inputs: dict[str, np.ndarray] = {}
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidArgument("'parameters' must be a JSON object")
    for key, value in body.items():
        if key == "parameters":
            continue
        spec = sig.inputs.get(key)
        if spec is None:
            raise InvalidArgument(f"unexpected inference input '{key}' for model '{name}'")
        inputs[key] = _tensor(spec, value, sig.max_batch_size > 0, name)
    request = InferRequest(model_name=name, model_version=version, inputs=inputs)
    for key, value in params.items():
        if key == "sequence_id":
            request.sequence_id = codec.json_sequence_id(value)
        elif key in ("sequence_start", "sequence_end") and isinstance(value, bool):
            setattr(request, key, value)
        else:
            request.parameters[key] = value
    return request


def _tensor(spec: Any, value: Any, batching: bool, model: str) -> np.ndarray:
    items = value if isinstance(value, list) else [value]
    try:
        if spec.datatype == "BYTES":
            array = np.empty(len(items), dtype=np.object_)
            for i, item in enumerate(items):
                array[i] = item.encode() if isinstance(item, str) else orjson.dumps(item)
        else:
            array = np.asarray(items, dtype=spec.numpy_dtype)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"unable to convert input '{spec.name}' of model '{model}' to {spec.datatype}: {exc}"
        ) from exc
    dims = tuple(spec.dims)
    if -1 not in dims and int(np.prod(dims, dtype=np.int64)) == array.size:
        array = array.reshape(dims)
    return array.reshape((1, *array.shape)) if batching else array


def answer(name: str, response: InferResponse) -> dict[str, Any]:
    out: dict[str, Any] = {"model_name": name, "model_version": str(response.model_version)}
    for key, array in response.outputs.items():
        values = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            for v in np.asarray(array).reshape(-1).tolist()
        ]
        out[key] = values[0] if len(values) == 1 else values
    return out


async def generate(edge: Edge, req: Request) -> Answer:
    dp = edge.dataplane
    name = req.params["model"]
    version = codec.parse_model_version(req.params.get("version"))
    mv = dp.resolve(name, version)
    await req.read()
    infer = build_request(mv, name, version, req.json())
    found: list[InferResponse] = []
    stream = dp.infer_stream(infer, mv)
    try:
        async for response in stream:
            if response.outputs or not response.final:
                found.append(response)
    finally:
        await stream.aclose()
    if len(found) != 1:
        raise InvalidArgument(
            f"generate expects exactly one response from model '{name}', got {len(found)}: "
            "use generate_stream"
        )
    return json_answer(answer(name, found[0]))


async def generate_stream(request: web.Request) -> web.StreamResponse:
    dp = request.app[DATAPLANE]
    name, version = _target(request)
    mv = dp.resolve(name, version)
    infer = build_request(mv, name, version, await json_body(request))
    reply = web.StreamResponse(headers={"Content-Type": SSE, "Cache-Control": "no-cache"})
    stream = dp.infer_stream(infer, mv)
    try:
        async for response in stream:
            if response.final and not response.outputs:
                break  # the flags-only final: nothing to send
            if not reply.prepared:
                await reply.prepare(request)
            await reply.write(b"data: " + orjson.dumps(answer(name, response)) + b"\n\n")
    except NaiadError as exc:
        if not reply.prepared:
            raise
        try:
            await reply.write(b"data: " + orjson.dumps({"error": exc.message}) + b"\n\n")
        except ConnectionResetError:
            return reply
    except ConnectionResetError:  # the client went away: its request is cancelled below
        return reply
    finally:
        await stream.aclose()  # a client that left cancels the request here
    if not reply.prepared:
        await reply.prepare(request)
    await reply.write_eof()
    return reply
