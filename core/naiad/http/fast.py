"""A lean HTTP/1.1 front for the requests clients send in a loop, in front of the aiohttp app.

aiohttp spends about 100 µs of Python on every request (request and response objects, a task,
a stream reader, header multidicts, its writer) — more than naiad's whole inference path for a
small model, and on one core that caps the server at a few thousand requests a second. This
front reads each connection itself and answers the hot V2 requests — inference, health, server
and model metadata, model readiness, configuration and statistics — by calling the same
functions as the aiohttp handlers (:mod:`naiad.http.handlers`), so the answers are the same.

Heads are parsed by llhttp (``httptools``), once per distinct head. Everything else — another
route or method, a query string or a percent-escape in the path, ``Transfer-Encoding``,
``Expect``, ``Upgrade``, HTTP/1.0, a repeated header, a head llhttp refuses or one ended by bare
LFs — makes the front hand the connection, with every byte read so far, to aiohttp's own
``RequestHandler`` for the rest of its life. aiohttp stays the complete implementation of the
API; the front only answers what it fully understands. A body over the size limit is refused
(413) from its head.

Requests on one connection are answered one at a time and in order (as aiohttp does), so a
pipelining client gets its answers in the order it asked. What a client can hold is bounded
(see :class:`FastProtocol`): time for a head and between body bytes, bytes per connection and
bodies in total, and nothing of a request it left before sending in full.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import http
import socket
import time
from collections.abc import Awaitable
from email.utils import formatdate
from typing import Final

import httptools
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from ..dataplane import DataPlane
from ..errors import NaiadError
from . import codec, handlers

#: a head that has not ended within this many bytes goes to aiohttp (which answers 400 / 431)
MAX_HEAD = 16 * 1024
#: aiohttp's limits on one request or header line and on the number of headers: beyond them
#: the front hands over and aiohttp answers (400)
MAX_LINE = 8190
MAX_HEADERS = 100
#: input buffered beyond this while a request runs pauses reading from the socket
READ_AHEAD = 1 << 20
#: bodies buffered by all connections of a front together (reserved from each head's
#: Content-Length): a connection whose body does not fit waits, not reading, until others are
#: answered; at least twice the largest body accepted
MAX_BUFFERED = 1 << 30
#: bodies up to this size are not counted against ``MAX_BUFFERED``
_SMALL_BODY = 1 << 16
#: after refusing a request from its head, what the client still sends is read and dropped for
#: this long (so it sees the answer instead of a reset), then the connection closes
_LINGER = 2.0
#: pipelined requests answered in one go before the front yields to the event loop
_PIPELINE_TURN = 32
#: bodies at least this large are written as a separate buffer instead of joined to the head
_JOIN_LIMIT = 1 << 16

#: the characters of a head the front takes at all (visible ASCII, space, tab, CR LF):
#: anything else is aiohttp's to judge
_HEAD_CHARS = bytes(range(0x20, 0x7F)) + b"\t\r\n"
_SERVER = SERVER_SOFTWARE.encode()
_STATUS = {s.value: b"%d %s" % (s.value, s.phrase.encode()) for s in http.HTTPStatus}


class _NotOurs(enum.Enum):
    """What the front hands to aiohttp instead of answering (the one member is the token)."""

    TOKEN = 0


_NOT_OURS: Final = _NotOurs.TOKEN

# what the route of a request is, after parsing
_LIVE, _READY, _SERVER_META, _ALL_STATS, _META, _MODEL_READY, _CONFIG, _STATS, _INFER = range(9)
#: a body longer than the limit: answered 413 from the head, then the connection closes
_TOO_LARGE = 9
_GET_TAILS = {b"": _META, b"ready": _MODEL_READY, b"config": _CONFIG, b"stats": _STATS}
_FIXED_GET = {
    b"/v2/health/live": _LIVE,
    b"/v2/health/ready": _READY,
    b"/v2": _SERVER_META,
    b"/v2/models/stats": _ALL_STATS,
}


class _Date:
    """The ``Date`` header value, formatted once a second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.value = formatdate(now, usegmt=True).encode()
        return self.value


class _Request:
    """What one request head says; shared by every request with the same head (never changed)."""

    __slots__ = ("route", "name", "version", "headers", "keep_alive", "body_start", "end")

    def __init__(
        self,
        route: int,
        name: str,
        version: bytes | None,
        headers: dict[bytes, bytes],
        keep_alive: bool,
        body_start: int,
        end: int,
    ) -> None:
        self.route = route
        self.name = name
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.body_start = body_start
        self.end = end


#: heads seen lately and what they parsed to: a client in a loop sends the same head each time
_HEADS: dict[bytes, _Request] = {}
_HEADS_MAX = 512


def parse_head(buf: bytes | bytearray, pos: int, max_input: int) -> _Request | _NotOurs | None:
    """The request at ``buf[pos:]``; None while its head is incomplete, ``_NOT_OURS`` when
    aiohttp must answer it. The request's body offsets count from ``pos``.

    A head is parsed by llhttp (``httptools``, the parser aiohttp's own C parser is), and kept
    by its exact bytes: the next request with the same head is not parsed again.
    """
    end = buf.find(b"\r\n\r\n", pos)
    if end < 0:
        if len(buf) - pos > MAX_HEAD or buf.find(b"\n\n", pos) >= 0:
            return _NOT_OURS  # too long, or ended by bare LFs: aiohttp answers 400
        return None
    if end - pos > MAX_HEAD:
        return _NOT_OURS
    head = buf[pos : end + 4] if isinstance(buf, bytes) else bytes(memoryview(buf)[pos : end + 4])
    req = _HEADS.get(head)
    if req is not None and (req.end - req.body_start > max_input) == (req.route == _TOO_LARGE):
        return req  # (a head judged against another limit is parsed again)
    parsed = _parse_head(head, max_input)
    if isinstance(parsed, _Request):
        if len(_HEADS) >= _HEADS_MAX:
            _HEADS.clear()
        _HEADS[head] = parsed
    return parsed


class _Head:
    """httptools callbacks: the target and headers of one head (``repeated`` if any repeats)."""

    __slots__ = ("url", "headers", "repeated", "complete")

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.repeated = False
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower()
        if key in self.headers:
            self.repeated = True
        self.headers[key] = value

    def on_headers_complete(self) -> None:
        self.complete = True


def _parse_head(head: bytes, max_input: int) -> _Request | _NotOurs:
    """``head`` (ending in CRLF CRLF) as the front's request, or ``_NOT_OURS``."""
    if head.translate(None, _HEAD_CHARS):  # only visible ASCII
        return _NOT_OURS
    lines = head.count(b"\n")
    if lines > MAX_HEADERS + 2 or max(map(len, head.split(b"\r\n"))) > MAX_LINE:
        return _NOT_OURS
    parsed = _Head()
    parser = httptools.HttpRequestParser(parsed)
    try:
        parser.feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return _NOT_OURS  # aiohttp's llhttp says the same: it answers 400
    headers = parsed.headers
    if not parsed.complete or parsed.repeated or parser.get_http_version() != "1.1":
        return _NOT_OURS
    if b"transfer-encoding" in headers or b"expect" in headers or b"upgrade" in headers:
        return _NOT_OURS
    if b"host" not in headers:  # HTTP/1.1 requires it; aiohttp answers 400
        return _NOT_OURS
    route = _route(parser.get_method(), parsed.url)
    if route is _NOT_OURS:
        return _NOT_OURS
    keep_alive = True
    connection = headers.get(b"connection")
    if connection is not None:
        # (llhttp's should_keep_alive() reads the next message's state once a head without a
        # body is complete)
        tokens = {t.strip() for t in connection.lower().split(b",")}
        if b"upgrade" in tokens:
            return _NOT_OURS
        keep_alive = b"close" not in tokens
    kind, name, version = route
    length = int(headers.get(b"content-length", b"0"))  # llhttp checked: digits only
    body_start = len(head)
    if length > max_input:
        kind = _TOO_LARGE
    return _Request(kind, name, version, headers, keep_alive, body_start, body_start + length)


def _route(method: bytes, target: bytes) -> tuple[int, str, bytes | None] | _NotOurs:
    """(route, model name, version digits) of the hot V2 requests, ``_NOT_OURS`` otherwise.

    It mirrors the aiohttp route table (``app.routes``) for the paths it takes: a model name is
    one non-empty path segment, a version only digits.
    """
    if not target.startswith(b"/v2") or not target.isascii():
        return _NOT_OURS
    if b"%" in target or b"?" in target or b"#" in target or b"/." in target or b"//" in target:
        return _NOT_OURS
    fixed = _FIXED_GET.get(target)
    if fixed is not None:
        return (fixed, "", None) if method == b"GET" else _NOT_OURS
    if not target.startswith(b"/v2/models/"):
        return _NOT_OURS
    segments = target[11:].split(b"/")
    name = segments[0]
    if not name or b"{" in name or b"}" in name:
        return _NOT_OURS
    version = None
    rest = segments[1:]
    if rest and rest[0] == b"versions":
        if len(rest) < 2 or not rest[1].isdigit():
            return _NOT_OURS
        version = rest[1]
        rest = rest[2:]
    if len(rest) > 1:
        return _NOT_OURS
    tail = rest[0] if rest else b""
    if not tail and rest:  # a trailing slash
        return _NOT_OURS
    if tail == b"infer":
        kind = _INFER if method == b"POST" else _NOT_OURS
    else:
        kind = _GET_TAILS.get(tail, _NOT_OURS) if method == b"GET" else _NOT_OURS
    if kind is _NOT_OURS:
        return _NOT_OURS
    return kind, name.decode(), version


class FastFront:
    """What every fast connection of one site shares."""

    def __init__(
        self,
        dataplane: DataPlane,
        aiohttp_server: web.Server,
        *,
        max_input: int,
        keepalive_timeout: float = 75.0,
        head_timeout: float = 30.0,
        body_timeout: float = 30.0,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self.dataplane = dataplane
        self.aiohttp_server = aiohttp_server
        self.max_input = max_input
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
        self.date = _Date()
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
        self._pending: _Request | None = None
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
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
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
                parsed = parse_head(buf, pos, front.max_input)
                if parsed is None:
                    break
                if parsed is _NOT_OURS:
                    self._buf = buf[pos:]
                    self._hand_off()
                    return
                req = parsed
                if req.route == _TOO_LARGE:
                    self._refuse(req)
                    return
            if len(buf) - pos < req.end:
                self._pending = req  # its body is still arriving
                size = req.end - req.body_start
                if size > _SMALL_BODY and not self._reserved and not self._wanted:
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
            if req.route == _INFER:
                self._busy = True
                self._task = self._loop.create_task(self._infer(req, body))
                break
            answer = self._get(req)
            if not isinstance(answer, tuple):  # a model that checks its own readiness
                self._busy = True
                self._task = self._loop.create_task(self._later(req, answer))
                break
            self._answer(answer, req.keep_alive)
            if self._reserved:
                front.release(self)
        transport = self._transport
        if transport is None:  # closed by a "Connection: close" answer
            return
        if pos:
            self._buf = buf[pos:]
            self._started = self._loop.time()
        if self._eof and not (self._busy or self._write_paused or self._more):
            transport.close()  # half-closed by the client, and all it sent is answered
        else:
            self._update_reading()

    def _refuse(self, req: _Request) -> None:
        """413 from the head of a request whose body is over the limit, then close."""
        size = req.end - req.body_start
        answer = handlers.error_answer(413, handlers.too_large_message(size, self._front.max_input))
        self._answer(answer, keep_alive=False, linger=True)

    def _get(self, req: _Request) -> handlers.Answer | Awaitable[handlers.Answer]:
        dp = self._front.dataplane
        route = req.route
        try:
            if route == _LIVE or route == _READY:
                return handlers.health_status(dp, ready=route == _READY), b"", None, None
            if route == _SERVER_META:
                return handlers.json_answer(dp.server_metadata())
            if route == _ALL_STATS:
                return handlers.json_answer(dp.statistics("", -1))
            version = codec.parse_model_version(_text(req.version))
            if route == _META:
                return handlers.json_answer(dp.model_metadata(req.name, version))
            if route == _MODEL_READY:
                return handlers.model_ready_answer(dp, req.name, version)
            if route == _CONFIG:
                return handlers.json_answer(dp.model_config(req.name, version))
            return handlers.json_answer(dp.statistics(req.name, version))
        except NaiadError as exc:
            return handlers.naiad_error_answer(exc)
        except Exception as exc:  # the server keeps serving whatever happened
            return handlers.internal_error_answer(exc, "GET", _path(req))

    async def _later(self, req: _Request, pending: Awaitable[handlers.Answer]) -> None:
        """A GET whose answer must be awaited; then on as :meth:`_infer` goes."""
        try:
            answer = await pending
        except NaiadError as exc:
            answer = handlers.naiad_error_answer(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            answer = handlers.internal_error_answer(exc, "GET", _path(req))
        self._done(req, answer)

    async def _infer(self, req: _Request, body: bytes | memoryview) -> None:
        dp = self._front.dataplane
        headers = req.headers
        try:
            version = codec.parse_model_version(_text(req.version))
            mv = dp.resolve(req.name, version)
            answer = await handlers.infer(
                dp,
                mv,
                req.name,
                version,
                body,
                max_input=self._front.max_input,
                content_encoding=_text(headers.get(b"content-encoding")),
                header_length=_text(headers.get(b"inference-header-content-length")),
                accept_encoding=_text(headers.get(b"accept-encoding")),
            )
        except NaiadError as exc:
            answer = handlers.naiad_error_answer(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the server keeps serving whatever a backend did
            answer = handlers.internal_error_answer(exc, "POST", _path(req))
        self._done(req, answer)

    def _done(self, req: _Request, answer: handlers.Answer) -> None:
        self._task = None
        self._busy = False
        self._answer(answer, req.keep_alive)
        if self._reserved:
            self._front.release(self)
        self._process()  # requests that arrived meanwhile; a half-close; reading again

    def _answer(self, answer: handlers.Answer, keep_alive: bool, linger: bool = False) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        status, body, content_type, headers = answer
        extra = b""
        if headers:
            extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items())
        if not keep_alive or self._front.closing:
            extra += b"Connection: close\r\n"
            keep_alive = False
        if content_type is not None:
            extra = b"Content-Type: %s\r\n%s" % (content_type.encode(), extra)
        head = b"HTTP/1.1 %s\r\nContent-Length: %d\r\nDate: %s\r\nServer: %s\r\n%s\r\n" % (
            _STATUS[status],
            len(body),
            self._front.date.get(),
            _SERVER,
            extra,
        )
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


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _path(req: _Request) -> str:
    version = f"/versions/{_text(req.version)}" if req.version is not None else ""
    return f"/v2/models/{req.name}{version}"


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
        dataplane: DataPlane,
        *,
        max_input: int,
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
            dataplane,
            server,
            max_input=max_input,
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
