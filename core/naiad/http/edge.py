"""The HTTP edge: one endpoint table, served by every HTTP transport, and one dispatcher.

An :class:`Endpoint` is a method, a path pattern (aiohttp's syntax), whether the lean front
(:mod:`naiad.http.fast`) may answer it, and a handler from a transport-free :class:`Request` to
an :data:`~naiad.http.handlers.Answer` (status, body, content type, headers). The table itself is
:data:`naiad.http.endpoints.ENDPOINTS`; the aiohttp app (:mod:`naiad.http.app`) and the lean
front are adapters that build a :class:`Request`, call :meth:`Edge.answer` (or
:meth:`Edge.answer_async`) and write the answer.

What a middleware would do in one transport — authentication, CORS, tracing, header
forwarding — is an :class:`HttpHooks` entry, run by the dispatcher for both fronts: request
hooks before the handler (one may answer instead of it), answer hooks on the status and headers
of every answer just before it is written. Plugins add hooks through
``naiad_register_http_hooks`` (:mod:`naiad.hookspecs`). Errors are mapped here, once:
a :class:`~naiad.errors.NaiadError` is Triton's ``{"error": ...}`` with its status, anything else
a logged 500 and the server keeps serving.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from ..dataplane import DataPlane
from ..errors import NaiadError
from ..plans import PlanCache
from . import handlers

#: no query (the lean front hands any request with a query string to aiohttp)
NO_QUERY: Mapping[str, str] = {}


class Request:
    """One HTTP request without its transport.

    ``params`` are the path pattern's fields (``model``, ``version``, ``region``...), ``headers``
    are looked up by lower-case name, ``body`` is the body once read (``await read()`` gets it:
    an adapter may pass a reader so that a handler can fail before a large body arrives),
    ``endpoint`` the table entry it was routed to (None when no route matched). The mappings
    may be shared between requests: never change them.
    """

    __slots__ = ("method", "path", "params", "query", "headers", "body", "endpoint", "_reader")

    def __init__(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes | memoryview | None,
        endpoint: Endpoint | None = None,
        reader: Callable[[], Awaitable[bytes]] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.params = params
        self.query = query
        self.headers = headers
        self.body = body
        self.endpoint = endpoint
        self._reader = reader

    async def read(self) -> bytes | memoryview:
        """The body, read once."""
        if self.body is None:
            self.body = await self._reader() if self._reader is not None else b""
        return self.body

    def json(self) -> dict:
        """The body (already read) as an optional JSON object: empty = ``{}``."""
        return handlers.json_object(self.body or b"")


#: a request hook: None to go on, or an answer given instead of the handler's
RequestHook = Callable[[Request], "handlers.Answer | None"]
#: an answer hook: (request, status, headers) -> None; it may add, change or remove headers
AnswerHook = Callable[[Request, int, MutableMapping[str, str]], None]


@dataclass
class HttpHooks:
    """Middleware-like concerns for every HTTP front, in the order they were added."""

    request: list[RequestHook] = field(default_factory=list)
    answer: list[AnswerHook] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One entry of the endpoint table.

    ``handler`` is ``(edge, request) -> Answer`` or a coroutine function of the same; with
    ``aiohttp=True`` it is an aiohttp handler instead (a streamed answer, or the legacy API's
    own conventions), served by the aiohttp app only, after the request hooks.
    """

    method: str
    path: str
    handler: Callable[..., Any]
    #: its category for ``--http-restricted-api`` (``health``, ``inference``...; "" = none)
    api: str
    #: the lean front answers it (a hot route: inference, health, metadata)
    lean: bool = False
    aiohttp: bool = False
    is_async: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.handler))
        if self.lean and self.aiohttp:
            raise ValueError(f"{self.method} {self.path}: an aiohttp handler cannot be lean")


class Edge:
    """What both HTTP fronts of one server share: the data plane, limits, hooks, caches."""

    def __init__(
        self,
        dataplane: DataPlane,
        *,
        max_input: int,
        hooks: HttpHooks | None = None,
        endpoints: list[Endpoint] | None = None,
        forward_pattern: re.Pattern[str] | None = None,
    ) -> None:
        from .endpoints import ENDPOINTS

        self.dataplane = dataplane
        self.max_input = max_input
        self.hooks = hooks if hooks is not None else HttpHooks()
        self.endpoints = endpoints if endpoints is not None else ENDPOINTS
        #: parsed binary request headers per model version (:mod:`naiad.plans`)
        self.plans = PlanCache()
        #: ``--http-header-forward-pattern`` (:mod:`naiad.forwarding`); None forwards nothing
        self.forward_pattern = forward_pattern

    def before(self, req: Request) -> handlers.Answer | None:
        """Run the request hooks; the first answer one gives, else None."""
        for hook in self.hooks.request:
            early = hook(req)
            if early is not None:
                return early
        return None

    def answer(
        self, endpoint: Endpoint, req: Request
    ) -> handlers.Answer | Awaitable[handlers.Answer]:
        """Serve ``req`` with a synchronous handler; never raises. A synchronous handler may
        return an awaitable when its answer cannot be known at once (a model's own readiness
        check): then so does this, and awaiting it never raises either."""
        try:
            if self.hooks.request:
                early = self.before(req)
                if early is not None:
                    return early
            answer = endpoint.handler(self, req)
        except Exception as exc:
            return self.failed(exc, req)
        if isinstance(answer, tuple):
            return answer
        return self._settle(answer, req)

    async def _settle(self, pending: Awaitable[handlers.Answer], req: Request) -> handlers.Answer:
        try:
            return await pending
        except Exception as exc:
            return self.failed(exc, req)

    async def answer_async(self, endpoint: Endpoint, req: Request) -> handlers.Answer:
        """Serve ``req`` with either kind of handler; never raises (but is cancellable)."""
        try:
            if self.hooks.request:
                early = self.before(req)
                if early is not None:
                    return early
            answer = endpoint.handler(self, req)
            if endpoint.is_async or not isinstance(answer, tuple):
                return await answer
            return answer
        except Exception as exc:
            return self.failed(exc, req)

    @staticmethod
    def failed(exc: Exception, req: Request) -> handlers.Answer:
        """The answer to a handler's exception: Triton's error form, one mapping."""
        if isinstance(exc, NaiadError):
            return handlers.naiad_error_answer(exc)
        return handlers.internal_error_answer(exc, req.method, req.path)

    def finish(self, req: Request, status: int, headers: MutableMapping[str, str]) -> None:
        """Run the answer hooks on an answer's headers, just before it is written."""
        for hook in self.hooks.answer:
            hook(req, status, headers)
