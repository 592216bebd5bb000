"""The lean front's connection limits for the connections aiohttp serves.

With ``--http-fast-path=false`` aiohttp reads every connection, and with the front on it reads
those the front hands over. aiohttp bounds a request line, its headers and one body
(``client_max_size``), and pauses a socket whose unread body passes its read buffer; it frees a
connection whose client half-closes or resets at once. It has no time limit for a head or a
body, and nothing bounds the bodies all its connections hold together. :class:`GuardedRunner`
(an ``AppRunner``) adds what :mod:`naiad.http.fast` enforces on its own connections:

- a request head must be complete ``head_timeout`` seconds after its first byte;
- a body being received must get new bytes at least every ``body_timeout`` seconds (while the
  server is not reading it — its handler busy, or waiting for room — the clock stops);
- bodies over :data:`~naiad.http.fast.SMALL_BODY` reserve their ``Content-Length`` in a total
  of :data:`~naiad.http.fast.MAX_BUFFERED` (at least twice the largest body accepted) before
  their handler runs: one that does not fit waits, and aiohttp stops reading its socket once
  its read buffer is full, so a waiting connection holds at most that buffer.

A connection over a limit is closed, as the lean front does. The handler reads a few of
aiohttp's ``RequestHandler`` internals (its message queue and count, its read-paused flag,
``_handle_request``); the tests run it against the aiohttp installed.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .fast import MAX_BUFFERED, SMALL_BODY


class BodyBudget:
    """Body bytes reserved by requests being read or handled, first come first served."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def reserve(self, size: int) -> asyncio.Future[None] | None:
        """None when ``size`` is reserved now; else a future that is done once it is."""
        if not self._waiting and (self.used + size <= self.limit or not self.used):
            self.used += size
            return None
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((size, future))
        return future

    def release(self, size: int) -> None:
        self.used -= size
        while self._waiting:
            wanted, future = self._waiting[0]
            if future.done():  # its client left while it waited
                self._waiting.popleft()
                continue
            if self.used + wanted > self.limit and self.used:
                break
            self._waiting.popleft()
            self.used += wanted
            future.set_result(None)


class Guard:
    """The limits, and the periodic check of every connection against them."""

    def __init__(
        self,
        *,
        max_input: int,
        head_timeout: float,
        body_timeout: float,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self.max_input = max_input
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.budget = BodyBudget(max(max_buffered, 2 * max_input))
        self.server: web.Server | None = None
        self._period = max(0.05, min(1.0, head_timeout / 4, body_timeout / 4))
        self._sweeper: asyncio.TimerHandle | None = None

    def start(self, server: web.Server) -> None:
        self.server = server
        self._sweeper = asyncio.get_running_loop().call_later(self._period, self._sweep)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        assert self.server is not None
        for handler in self.server.connections:
            if isinstance(handler, GuardedHandler):
                handler.check(now)
        self._sweeper = loop.call_later(self._period, self._sweep)


class GuardedHandler(RequestHandler):
    """aiohttp's request handler, timed and budgeted by a :class:`Guard`."""

    __slots__ = ("_guard", "_head_since", "_last", "_payload", "_reserving")

    def __init__(self, manager: web.Server, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        #: when the head now arriving began (None: no head is arriving)
        self._head_since: float | None = None
        #: when bytes last came
        self._last = self._loop.time()
        #: the body of the last request whose head was read
        self._payload: Any = None
        #: set while the request waits for room in the budget
        self._reserving: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        payload = self._payload
        complete = payload is None or payload.is_eof()
        super().data_received(data)
        now = self._last = self._loop.time()
        if self._request_count != count:  # a head is complete (and its body begins)
            self._head_since = None
            self._payload = self._messages[-1][1] if self._messages else None
        elif data and complete and self._head_since is None:
            # bytes after a complete request: the next head has begun (one that begins in the
            # packet ending a body is left to the idle limit)
            self._head_since = now

    def connection_lost(self, exc: BaseException | None) -> None:
        future = self._reserving
        if future is not None and not future.done():
            future.set_exception(ConnectionResetError("the client left"))
        self._payload = None
        super().connection_lost(exc)

    def check(self, now: float) -> None:
        """Close the connection when its head or its body stopped arriving."""
        if self.transport is None:
            return
        guard = self._guard
        if self._head_since is not None:
            if getattr(self, "_request_in_progress", False):  # pipelined: timed after the answer
                self._head_since = now
            elif now - self._head_since > guard.head_timeout:
                self.force_close()
            return
        payload = self._payload
        if payload is None or payload.is_eof() or self._reserving is not None:
            return
        if self._reading_paused:  # the server is not reading: the client is not late
            self._last = now
        elif now - self._last > guard.body_timeout:
            self.force_close()

    async def _handle_request(self, request: Any, start_time: Any, request_handler: Any) -> Any:
        size = request.content_length or 0
        guard = self._guard
        if size <= SMALL_BODY or size > guard.max_input:  # (over the limit: 413 from its head)
            return await super()._handle_request(request, start_time, request_handler)
        future = guard.budget.reserve(size)
        if future is not None:
            self._reserving = future
            try:
                await future
            except BaseException:
                if future.done() and not future.cancelled() and future.exception() is None:
                    guard.budget.release(size)
                raise
            finally:
                self._reserving = None
                self._last = self._loop.time()
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            guard.budget.release(size)


class GuardedServer(web.Server):
    """An aiohttp ``Server`` whose connections are :class:`GuardedHandler` s."""

    def __init__(self, guard: Guard, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def __call__(self) -> GuardedHandler:
        return GuardedHandler(self, self.guard, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """``web.AppRunner`` whose server guards its connections (see the module)."""

    def __init__(
        self,
        app: web.Application,
        *,
        max_input: int,
        head_timeout: float = 30.0,
        body_timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.guard = Guard(
            max_input=max_input, head_timeout=head_timeout, body_timeout=body_timeout
        )

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        server = GuardedServer(
            self.guard,
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )
        self.guard.start(server)
        return server

    async def _cleanup_server(self) -> None:
        self.guard.stop()
        await super()._cleanup_server()
