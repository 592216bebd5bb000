"""What every HTTP handler module shares: the app keys, and JSON in and out."""

from __future__ import annotations

import orjson
from aiohttp import web

from ..dataplane import DataPlane
from ..errors import InvalidArgument

DATAPLANE = web.AppKey("dataplane", DataPlane)
MAX_INPUT = web.AppKey("max_input_size", int)


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """Triton's error form: ``{"error": "..."}`` with a JSON content type."""
    return web.Response(
        status=status,
        body=orjson.dumps({"error": message}),
        content_type="application/json",
        headers=headers,
    )


def json_response(obj: object) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


async def json_body(request: web.Request) -> dict:
    """An optional JSON object body (empty body = {})."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"failed to parse the request JSON buffer: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return obj
