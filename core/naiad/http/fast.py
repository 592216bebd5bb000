"""A lean HTTP/1.1 front for the requests clients send in a loop, in front of the aiohttp app.

aiohttp spends about 100 µs of Python on every request (request and response objects, a task,
a stream reader, header multidicts, its writer) — more than naiad's whole inference path for a
small model, and on one core that caps the server at a few thousand requests a second. This
front reads each connection itself and answers the hot V2 requests — inference, health, server
and model metadata, model readiness, configuration and statistics — with the same handlers
as the aiohttp app, so the answers are the same.

Which requests it answers is the endpoint table's ``lean`` flag (:mod:`naiad.http.endpoints`),
looked up from the head (:mod:`naiad.http.lean_head`); anything else makes the front hand the
connection, with every byte read so far, to aiohttp's own ``RequestHandler`` for the rest of its
life. Both fronts answer through the same :class:`~naiad.http.edge.Edge`: the same handlers,
hooks and error mapping. A body over the size limit is refused (413) from its head.

Requests on one connection are answered one at a time and in order (as aiohttp does), so a
pipelining client gets its answers in the order it asked. What a client can hold is bounded
(see :class:`FastProtocol`): time for a head and between body bytes, bytes per connection and
bodies in total, and nothing of a request it left before sending in full.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable

from aiohttp import web

from ..sockets import no_delay
from . import handlers
from .edge import NO_QUERY, Edge, Request
from .lean_head import NOT_OURS, LeanHead, LeanRoutes, parse_head
from .lean_write import Heads

#: input buffered beyond this while a request runs pauses reading from the socket
READ_AHEAD = 1 << 20
#: bodies buffered by all connections of a front together (reserved from each head's
#: Content-Length): a connection whose body does not fit waits, not reading, until others are
#: answered; at least twice the largest body accepted
MAX_BUFFERED = 1 << 30
#: bodies up to this size are not counted against ``MAX_BUFFERED``
SMALL_BODY = 1 << 16
#: after refusing a request from its head, what the client still sends is read and dropped for
#: this long (so it sees the answer instead of a reset), then the connection closes
_LINGER = 2.0
#: pipelined requests answered in one go before the front yields to the event loop
_PIPELINE_TURN = 32
#: bodies at least this large are written as a separate buffer instead of joined to the head
_JOIN_LIMIT = 1 << 16


class FastFront:
    """What every fast connection of one site shares."""

    def __init__(
        self,
        edge: Edge,
        aiohttp_server: web.Server,
        *,
        keepalive_timeout: float = 75.0,
        head_timeout: float = 30.0,
        body_timeout: float = 30.0,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self.edge = edge
        #: the endpoint table's lean entries, as the lookups the head parser uses
        self.routes = LeanRoutes(edge.endpoints)
        self.aiohttp_server = aiohttp_server
        self.max_input = max_input = edge.max_input
        self.keepalive_timeout = keepalive_timeout
        #: the longest a request head may take to arrive, from its first byte
        self.head_timeout = head_timeout
        #: the longest wait for the next bytes of a request body
        self.body_timeout = body_timeout
        self.max_buffered = max(max_buffered, 2 * max_input)
        #: body bytes reserved by connections receiving or holding a large body
        self.buffered = 0
        #: connections waiting (not reading) until their body fits in ``max_buffered``
        self.waiting: collections.deque[FastProtocol] = collections.deque()
        self.connections: set[FastProtocol] = set()
        #: answer heads, with the ``Date`` of this second
        self.heads = Heads()
        self.closing = False
        self._sweeper: asyncio.TimerHandle | None = None
        timeouts = (keepalive_timeout, head_timeout, body_timeout)
        self._period = max(0.05, min(1.0, *(t / 4 for t in timeouts)))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = loop.call_later(self._period, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close connections idle for longer than the keep-alive timeout (as aiohttp does), and
        those whose request head or body stopped arriving."""
        now = loop.time()
        for conn in list(self.connections):
            conn.sweep(now)
        self._sweeper = loop.call_later(self._period, self._sweep, loop)

    def reserve(self, conn: FastProtocol, size: int) -> bool:
        """Reserve ``size`` body bytes for ``conn``; else queue it (it stops reading)."""
        if self.buffered + size <= self.max_buffered or not self.buffered:
            self.buffered += size
            conn._reserved = size
            return True
        conn._wanted = size
        self.waiting.append(conn)
        return False

    def release(self, conn: FastProtocol) -> None:
        """``conn`` holds its body no more: the bytes go to the connections waiting, in order."""
        self.buffered -= conn._reserved
        conn._reserved = 0
        conn._wanted = 0
        while self.waiting:
            nxt = self.waiting[0]
            if not nxt._wanted or nxt._transport is None:
                self.waiting.popleft()
                continue
            if self.buffered + nxt._wanted > self.max_buffered and self.buffered:
                break
            self.waiting.popleft()
            self.buffered += nxt._wanted
            nxt._reserved, nxt._wanted = nxt._wanted, 0
            nxt._granted()

    def close(self) -> None:
        """Stop: idle connections close now, busy ones after their answer."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections):
            conn.close_if_idle(None)

    def protocol(self) -> FastProtocol:
        return FastProtocol(self)


class FastProtocol(asyncio.Protocol):
    """One client connection, until it closes or is handed to aiohttp.

    A connection holds nothing the client cannot complete: when the client half-closes or
    resets with a request only partly sent, the connection and its buffer go at once; a head
    that takes longer than ``head_timeout`` or a body that stalls for ``body_timeout`` closes
    it; a large body is received only once it fits in the front's ``max_buffered``.
    """

    __slots__ = (
        "_front",
        "_loop",
        "_transport",
        "_buf",
        "_pending",
        "_busy",
        "_task",
        "_write_paused",
        "_read_paused",
        "_eof",
        "_more",
        "_last",
        "_started",
        "_reserved",
        "_wanted",
        "_linger",
    )

    def __init__(self, front: FastFront) -> None:
        self._front = front
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf: bytes | bytearray = b""
        self._pending: LeanHead | None = None
        self._busy = False
        self._task: asyncio.Task | None = None
        self._write_paused = False
        self._read_paused = False
        self._eof = False
        #: a continuation of a long pipeline is scheduled
        self._more = False
        #: when bytes last came, and when the request now arriving began
        self._last = 0.0
        self._started = 0.0
        #: body bytes reserved in the front, and wanted while waiting for them
        self._reserved = 0
        self._wanted = 0
        #: refused from its head: what comes is dropped until this timer closes the connection
        self._linger: asyncio.TimerHandle | None = None

    # ---- asyncio protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        no_delay(transport)
        self._last = self._loop.time()
        self._front.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._front.connections.discard(self)
        self._transport = None
        self._buf = b""
        self._pending = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._reserved or self._wanted:
            self._front.release(self)

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._linger is not None:
            return  # closed after a "Connection: close" answer, or dropping what follows a 413
        buf = self._buf
        now = self._last = self._loop.time()
        if not buf:
            self._buf = data
            self._started = now
        elif isinstance(buf, bytearray):
            buf += data
        else:
            self._buf = bytearray(buf)
            self._buf += data
        if self._busy or self._write_paused or self._wanted:
            self._update_reading()
            return
        self._process()

    def eof_received(self) -> bool:
        """The client is done sending (a half-close): answer what it sent in full, then close.
        A request it sent only in part can never complete: the connection goes now."""
        if self._linger is None and (self._busy or self._write_paused or self._more):
            self._eof = True
            return True  # keep the transport open for the answers
        return False  # nothing running or waiting: the transport closes now

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._busy:
            self._process()

    def sweep(self, now: float) -> None:
        """The front's periodic check: close if idle too long, or a request stalled."""
        transport = self._transport
        if transport is None or self._busy or self._wanted or self._write_paused:
            return
        front = self._front
        if self._buf:
            if self._pending is None:
                stalled = now - self._started > front.head_timeout
            else:
                stalled = now - self._last > front.body_timeout
            if stalled:
                transport.close()
        elif now - self._last > front.keepalive_timeout:
            transport.close()

    def _update_reading(self) -> None:
        """Read while the buffer is small, or a body with its reservation is arriving."""
        transport = self._transport
        if transport is None:
            return
        pause = bool(self._wanted) or (
            (self._busy or self._write_paused) and len(self._buf) > READ_AHEAD
        )
        if pause != self._read_paused:
            self._read_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _granted(self) -> None:
        """The front reserved the body this connection waited for: receive it."""
        self._last = self._loop.time()
        self._update_reading()

    # ---- requests --------------------------------------------------------------------------

    def _process(self) -> None:
        """Answer the complete requests in the buffer, in order, until one must wait."""
        front = self._front
        buf = self._buf
        pos = 0  # where the next request starts: the buffer is cut once, at the end
        answered = 0
        self._more = False
        while self._transport is not None and not self._busy and not self._write_paused:
            if pos >= len(buf):
                break
            if answered == _PIPELINE_TURN:  # a long pipeline: let other connections in
                self._loop.call_soon(self._process)
                self._more = True
                break
            answered += 1
            req = self._pending
            if req is None:
                parsed = parse_head(buf, pos, front.max_input, front.routes)
                if parsed is None:
                    break
                if parsed is NOT_OURS:
                    self._buf = buf[pos:]
                    self._hand_off()
                    return
                req = parsed
                if req.endpoint is None:
                    self._refuse(req)
                    return
            if len(buf) - pos < req.end:
                self._pending = req  # its body is still arriving
                size = req.end - req.body_start
                if size > SMALL_BODY and not self._reserved and not self._wanted:
                    front.reserve(self, size)
                break
            self._pending = None
            start, end = pos + req.body_start, pos + req.end
            if isinstance(buf, bytes):
                body: bytes | memoryview = buf[start:end]
            elif end - start > _JOIN_LIMIT:
                # a large body arrived in pieces: hand it on without another copy (read-only,
                # as a bytes body would be; the buffer is replaced below, never resized)
                body = memoryview(buf).toreadonly()[start:end]
            else:
                body = bytes(memoryview(buf)[start:end])
            pos = end
            endpoint = req.endpoint
            assert endpoint is not None
            request = Request(
                req.method, req.path, req.params, NO_QUERY, req.headers, body, endpoint
            )
            pending: Awaitable[handlers.Answer]
            if endpoint.is_async:
                pending = front.edge.answer_async(endpoint, request)
            else:
                answer = front.edge.answer(endpoint, request)
                if isinstance(answer, tuple):
                    self._answer(answer, request, req.keep_alive)
                    if self._reserved:
                        front.release(self)
                    continue
                pending = answer  # a model that checks its own readiness
            self._busy = True
            self._task = self._loop.create_task(self._run(req, request, pending))
            break
        transport = self._transport
        if transport is None:  # closed by a "Connection: close" answer
            return
        if pos:
            self._buf = buf[pos:]
            self._started = self._loop.time()
        if self._eof and not (self._busy or self._write_paused or self._more):
            transport.close()  # half-closed by the client, and all it sent is answered
        elif self._read_paused or self._wanted or len(self._buf) > READ_AHEAD:
            self._update_reading()  # (else reading goes on, as it does now)

    def _refuse(self, req: LeanHead) -> None:
        """413 from the head of a request whose body is over the limit, then close."""
        size = req.end - req.body_start
        answer = handlers.error_answer(413, handlers.too_large_message(size, self._front.max_input))
        request = Request(req.method, req.path, req.params, NO_QUERY, req.headers, b"")
        self._answer(answer, request, keep_alive=False, linger=True)

    async def _run(
        self, req: LeanHead, request: Request, pending: Awaitable[handlers.Answer]
    ) -> None:
        """Await an answer the edge could not give at once (it never raises), then go on."""
        answer = await pending
        self._task = None
        self._busy = False
        self._answer(answer, request, req.keep_alive)
        if self._reserved:
            self._front.release(self)
        self._process()  # requests that arrived meanwhile; a half-close; reading again

    def _answer(
        self, answer: handlers.Answer, request: Request, keep_alive: bool, linger: bool = False
    ) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        front = self._front
        status, body, content_type, headers = answer
        if front.edge.hooks.answer:
            headers = dict(headers or ())
            front.edge.finish(request, status, headers)
        if not keep_alive or front.closing:
            keep_alive = False
        head = front.heads.get(status, len(body), content_type, headers, not keep_alive)
        if len(body) < _JOIN_LIMIT:
            transport.write(head + body)
        else:
            transport.writelines((head, body))
        self._last = self._loop.time()
        if not keep_alive:
            self._buf = b""
            self._pending = None
            self._front.connections.discard(self)
            if linger:
                # the client may still be sending the body: read and drop it for a while, so
                # that it reads this answer instead of a reset
                transport.write_eof()
                self._linger = self._loop.call_later(_LINGER, transport.close)
                if self._read_paused:
                    self._read_paused = False
                    transport.resume_reading()
                return
            transport.close()
            # whatever the client sent after this request is not read, let alone run
            self._transport = None

    # ---- the rest of the connection's life -------------------------------------------------

    def _hand_off(self) -> None:
        """Give the connection, and what it sent so far, to aiohttp's request handler."""
        transport = self._transport
        assert transport is not None and not self._busy
        front = self._front
        front.connections.discard(self)
        data = bytes(self._buf)
        self._buf = b""
        self._transport = None
        handler = front.aiohttp_server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        handler.data_received(data)

    def close_if_idle(self, deadline: float | None) -> None:
        """Close now if no request is running and (with a deadline) nothing came since it."""
        transport = self._transport
        if transport is None or self._busy:
            return
        if deadline is None or self._last < deadline:
            transport.close()


class FastSite(web.BaseSite):
    """An aiohttp site whose connections start on the fast front.

    It lives in the runner like a ``TCPSite``: ``runner.cleanup()`` stops it, and the
    connections handed to aiohttp are closed with the runner's own.
    """

    __slots__ = ("_host", "_port", "_reuse_address", "_front", "_bound_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        edge: Edge,
        *,
        head_timeout: float = 30.0,
        body_timeout: float = 30.0,
        reuse_address: bool = True,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._reuse_address = reuse_address
        server = runner.server
        assert server is not None
        self._front = FastFront(
            edge,
            server,
            head_timeout=head_timeout,
            body_timeout=body_timeout,
        )
        self._bound_port = port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._bound_port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._front.protocol,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
        )
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]
        self._front.start(loop)

    async def stop(self) -> None:
        await super().stop()
        self._front.close()
