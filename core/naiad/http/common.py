"""What every HTTP handler module shares: the app keys, and JSON in and out."""

from __future__ import annotations

from aiohttp import web

from .. import memory
from ..dataplane import DataPlane
from . import handlers

DATAPLANE = web.AppKey("dataplane", DataPlane)
MAX_INPUT = web.AppKey("max_input_size", int)


def answer_response(answer: handlers.Answer) -> web.Response:
    """An answer of :mod:`naiad.http.handlers` as an aiohttp response."""
    status, body, content_type, headers = answer
    return web.Response(status=status, body=body, content_type=content_type, headers=headers)


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """Triton's error form: ``{"error": "..."}`` with a JSON content type."""
    return answer_response(handlers.error_answer(status, message, headers))


def too_large_response(size: int, limit: int) -> web.Response:
    """413 from the head of a request whose ``Content-Length`` is over the limit; aiohttp reads
    and drops what the client still sends for a while, then closes the connection."""
    response = error_response(413, handlers.too_large_message(size, limit))
    response.force_close()
    return response


async def read_body(request: web.Request) -> bytes:
    """The request's body; when a large one never arrives in full (the client left), the
    memory it took is handed back to the system (:func:`naiad.memory.trim_soon`)."""
    try:
        return await request.read()
    except BaseException:
        if (request.content_length or 0) >= memory.TRIM_FROM:
            memory.trim_soon(collect=True)
        raise


async def json_body(request: web.Request) -> dict:
    """An optional JSON object body (empty body = {})."""
    return handlers.json_object(await request.read())
