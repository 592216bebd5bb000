"""One gRPC call of the lean front (:mod:`naiad.grpc.front`): what its header block says
(:class:`CallHead`), its state and the *context* the service methods get (:class:`Call`), and the
gRPC pieces of the wire: status trailers, message prefixes, ``grpc-timeout``, compression."""

from __future__ import annotations

import asyncio
import base64
import urllib.parse
import zlib
from typing import TYPE_CHECKING, Any

from .h2frames import Stream, encode_headers

if TYPE_CHECKING:
    from .front import GrpcProtocol

OK, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL = 0, 1, 2, 4, 12, 13
RESOURCE_EXHAUSTED = 8
_CONTENT_TYPE = (b"content-type", b"application/grpc")
_ACCEPT = (b"grpc-accept-encoding", b"identity,deflate,gzip")
HEAD = encode_headers([(b":status", b"200"), _CONTENT_TYPE, _ACCEPT])
HEAD_GZIP = encode_headers(
    [(b":status", b"200"), _CONTENT_TYPE, (b"grpc-encoding", b"gzip"), _ACCEPT]
)
OK_TRAILERS = encode_headers([(b"grpc-status", b"0")])
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
#: what grpc-message may carry unescaped: printable ASCII except '%'
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)
#: compressed messages at least this large are inflated on a worker thread
INFLATE_OFF_LOOP = 1 << 20
END = object()


def status_block(code: int, message: str, trailers_only: bool) -> bytes:
    headers = [(b":status", b"200"), _CONTENT_TYPE] if trailers_only else []
    headers.append((b"grpc-status", b"%d" % code))
    if message:
        headers.append((b"grpc-message", urllib.parse.quote(message, _MESSAGE_SAFE).encode()))
    return encode_headers(headers)


class CallHead:
    """What a request's header block says (cached with the block: never changed)."""

    __slots__ = ("rpc", "handler", "timeout", "encoding", "gzip_ok", "metadata", "refusal")

    def __init__(self) -> None:
        self.rpc = ""
        self.handler: Any = None
        self.timeout: float | None = None
        self.encoding = b"identity"
        self.gzip_ok = False
        self.metadata: tuple[tuple[str, Any], ...] = ()
        #: answer at once with this header block (ending the stream) instead of calling
        self.refusal: bytes | None = None


class Call:
    """One RPC in progress; also the *context* the service methods get."""

    __slots__ = (
        "proto",
        "stream",
        "head",
        "buf",
        "placed",
        "fill",
        "task",
        "timer",
        "queue",
        "started",
        "done",
        "last",
        "reserved",
    )

    def __init__(self, proto: GrpcProtocol, stream: Stream, head: CallHead) -> None:
        self.proto = proto
        self.stream = stream
        self.head = head
        self.buf = bytearray()
        #: a large unary message's memory of its size (its bytes up to ``fill``) instead of
        #: ``buf``
        self.placed: Any = None
        self.fill = 0
        self.task: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None
        #: (message, its size on the wire) for a streaming RPC's reader, then END
        self.queue: asyncio.Queue[Any] | None = None
        #: the response headers have gone out
        self.started = False
        self.done = False
        #: when the client last sent DATA (the body-progress limit)
        self.last = 0.0
        #: budget bytes reserved for the message being received
        self.reserved = 0

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self.head.metadata

    async def write(self, message: Any) -> None:
        """Send one message of a streaming response (waiting while flow control holds it)."""
        if self.done:
            raise asyncio.CancelledError
        proto, stream = self.proto, self.stream
        proto.send(stream, self._start(), proto.encode(self, message.SerializeToString()), None)
        while (stream.pending or proto._write_paused) and not stream.local_closed:
            if stream.pending:
                stream.drained = proto.loop.create_future()
                await stream.drained
            else:
                await proto.drain()

    def requests(self) -> Any:
        return Requests(self)

    def _start(self) -> bytes | None:
        if self.started:
            return None
        self.started = True
        return HEAD_GZIP if self.proto.compresses(self) else HEAD

    def finish(
        self, code: int, message: str = "", data: tuple[bytes | memoryview, ...] = ()
    ) -> None:
        """End the call: its last DATA (if any) and the status."""
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        if code == OK and not data:
            trailers = OK_TRAILERS if self.started else status_block(OK, "", True)
            self.proto.send(self.stream, None, (), trailers)
            return
        head = self._start() if data else None
        trailers = OK_TRAILERS if code == OK else status_block(code, message, not self.started)
        self.proto.send(self.stream, head, data, trailers)


class Requests:
    """The request messages of a streaming call, as the service reads them."""

    def __init__(self, call: Call) -> None:
        self.call = call

    def __aiter__(self) -> Requests:
        return self

    async def __anext__(self) -> Any:
        call = self.call
        queue = call.queue
        assert queue is not None
        item = await queue.get()
        if item is END:
            raise StopAsyncIteration
        message, size = item
        call.proto.consumed(call.stream, size)  # the client may send more
        return message


def parse_timeout(value: bytes) -> float | None:
    """``grpc-timeout`` (1-8 digits and a unit) in seconds; None if malformed."""
    unit = _TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


def unbase64(value: bytes) -> bytes:
    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4))
    except ValueError:
        return value


def inflate(encoding: bytes, data: Any) -> bytes:
    if encoding == b"identity":
        raise ValueError("compressed message without grpc-encoding")
    return zlib.decompress(data, 47)  # zlib (grpc's deflate) or gzip, told by the header


def parse_error(flag: int, exc: Exception) -> str:
    if flag and isinstance(exc, (zlib.error, ValueError)):
        return f"Failed to decompress the request message: {exc}"
    return "Exception deserializing request!"
