"""The aiohttp adapter over the endpoint table (:mod:`naiad.http.endpoints`).

Every table entry becomes an aiohttp route, in the table's order: the route builds the
transport-free :class:`~naiad.http.edge.Request`, the :class:`~naiad.http.edge.Edge` answers
it, and the answer becomes a ``web.Response``. Entries with an aiohttp handler of their own (the
legacy API, streamed answers) run it after the edge's request hooks. The edge's answer hooks run
on every response this app prepares (``on_response_prepare``), aiohttp's own 404 / 405 included.
What stays aiohttp's here is framing: the 413 from a ``Content-Length`` over the limit, and
aiohttp's own HTTP errors in Triton's error form.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..dataplane import DataPlane
from .common import (
    DATAPLANE,
    MAX_INPUT,
    answer_response,
    error_response,
    read_body,
    too_large_response,
)
from .edge import NO_QUERY, Edge, Endpoint, HttpHooks, Request
from .legacy import LEGACY, LegacyState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

EDGE = web.AppKey("edge", Edge)
#: the transport-free request of an aiohttp request, once built (for the answer hooks)
_REQUEST = "naiad.request"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Framing errors, and what aiohttp's own handlers raise, in Triton's error form."""
    if request.content_length is not None and request.content_length > request.app[MAX_INPUT]:
        return too_large_response(request.content_length, request.app[MAX_INPUT])
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:  # the server keeps serving whatever a handler did
        return answer_response(Edge.failed(exc, _request_of(request)))


def _request_of(
    request: web.Request, body: bytes | None = None, endpoint: Endpoint | None = None
) -> Request:
    """The transport-free form of ``request`` (built once per request)."""
    req = request.get(_REQUEST)
    if req is None:
        req = Request(
            request.method,
            request.path,
            request.match_info,
            request.query or NO_QUERY,
            request.headers,
            body,
            endpoint,
            functools.partial(read_body, request),
        )
        request[_REQUEST] = req
    return req


def _route(edge: Edge, endpoint: Endpoint) -> Handler:
    """The aiohttp handler of one table entry."""
    if endpoint.aiohttp:
        own: Handler = endpoint.handler

        async def native(request: web.Request) -> web.StreamResponse:
            if edge.hooks.request:
                early = edge.before(_request_of(request, None, endpoint))
                if early is not None:
                    return answer_response(early)
            return await own(request)

        return native
    if endpoint.is_async:

        async def run_async(request: web.Request) -> web.StreamResponse:
            # the body is read by the handler (an unknown model fails before a large one comes)
            req = _request_of(request, None, endpoint)
            return answer_response(await edge.answer_async(endpoint, req))

        return run_async

    async def run(request: web.Request) -> web.StreamResponse:
        req = _request_of(request, await read_body(request), endpoint)
        answer = edge.answer(endpoint, req)
        return answer_response(answer if isinstance(answer, tuple) else await answer)

    return run


async def _answer_hooks(request: web.Request, response: web.StreamResponse) -> None:
    edge = request.app[EDGE]
    if edge.hooks.answer:
        edge.finish(_request_of(request), response.status, response.headers)


def _route_def(endpoint: Endpoint, handler: Handler) -> web.RouteDef:
    if endpoint.method == "GET":
        return web.get(endpoint.path, handler)  # HEAD too, as aiohttp's GET routes answer it
    return web.route(endpoint.method, endpoint.path, handler)


def routes(edge: Edge | None = None) -> list[web.RouteDef]:
    """Every route of the endpoint table, in its order, as aiohttp routes."""
    if edge is None:  # the table alone (its handlers are never called)
        edge = Edge(None, max_input=0)  # type: ignore[arg-type]
    return [_route_def(e, _route(edge, e)) for e in edge.endpoints]


def make_app(
    dataplane: DataPlane,
    *,
    max_input_size: int = 64 * 1024 * 1024,
    hooks: HttpHooks | None = None,
    edge: Edge | None = None,
    forward_pattern: re.Pattern[str] | None = None,
) -> web.Application:
    """The HTTP application for one data plane (its :class:`Edge` as ``app[EDGE]``)."""
    if edge is None:
        edge = Edge(
            dataplane, max_input=max_input_size, hooks=hooks, forward_pattern=forward_pattern
        )
    app = web.Application(middlewares=[error_middleware], client_max_size=max_input_size)
    app[DATAPLANE] = dataplane
    app[MAX_INPUT] = max_input_size
    app[EDGE] = edge
    app[LEGACY] = LegacyState()
    app.add_routes(routes(edge))
    app.on_response_prepare.append(_answer_hooks)
    return app
