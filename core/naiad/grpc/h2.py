"""HTTP/2 (RFC 9113) server connections on asyncio, for naiad's lean gRPC front.

:class:`H2Protocol` speaks the framing itself: the connection preface, SETTINGS and their ACKs,
PING, flow control both ways (WINDOW_UPDATE), HEADERS/CONTINUATION, DATA, RST_STREAM and GOAWAY.
Header blocks are decoded by python-hyper's ``hpack``; a block seen again while the dynamic
table is unchanged (a client in a loop sends the same bytes each call) is not decoded again.
Headers are sent as literals that never touch the dynamic table (:func:`encode_headers`), so a
block the server sends can be built once and reused.

What a stream means is the subclass's: :meth:`H2Protocol.head` turns a decoded header list into
the value handed to :meth:`H2Protocol.on_headers` (and is cached with the block),
:meth:`H2Protocol.on_data` gets the stream's DATA, :meth:`H2Protocol.on_reset` a stream the
client reset or the connection lost.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from typing import Any, cast

import hpack
from hpack.table import HeaderTable

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
ENHANCE_YOUR_CALM = 11
# settings
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 1, 2, 3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 4, 5, 6

MAX_WINDOW = 2**31 - 1
#: the largest frame the server takes (it says so in its SETTINGS)
MAX_FRAME = 1 << 20
#: receive windows: per stream, and for the connection
STREAM_WINDOW = 16 << 20
CONNECTION_WINDOW = 64 << 20
MAX_STREAMS = 1024
MAX_HEADER_LIST = 1 << 20
#: decoded header blocks kept per connection
_BLOCKS_MAX = 64
#: frames of at most this many bytes in all are joined before writing
_JOIN = 1 << 16

_HEAD = struct.Struct(">BHBBI")
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEAD.pack(n >> 16, n & 0xFFFF, kind, flags, stream_id) + payload


def _int(value: int, bits: int, first: int = 0) -> bytes:
    """An HPACK integer with a ``bits``-bit prefix (RFC 7541 §5.1)."""
    limit = (1 << bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A header block of literals without indexing (RFC 7541 §6.2.2), ``:status: 200`` as the
    static entry: it leaves the peer's dynamic table as it was, so it can be reused."""
    out = []
    for name, value in headers:
        if name == b":status" and value == b"200":
            out.append(b"\x88")
        else:
            out.append(b"\x00" + _int(len(name), 7) + name + _int(len(value), 7) + value)
    return b"".join(out)


class _Table(HeaderTable):
    """hpack's dynamic table, counting its changes (a cached block is valid while none)."""

    generation = 0

    def add(self, name: bytes, value: bytes) -> Any:
        self.generation += 1
        return super().add(name, value)

    @HeaderTable.maxsize.setter  # type: ignore[attr-defined, untyped-decorator]
    def maxsize(self, newmax: int) -> None:
        self.generation += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class ConnectionError_(Exception):
    """A connection error: GOAWAY with ``code``, then close."""

    def __init__(self, code: int, debug: str = "") -> None:
        super().__init__(debug)
        self.code = code
        self.debug = debug


class Stream:
    """One HTTP/2 stream; ``call`` is the subclass's state for it."""

    __slots__ = (
        "id",
        "send_window",
        "recv_window",
        "unacked",
        "remote_closed",
        "local_closed",
        "pending",
        "pending_end",
        "drained",
        "call",
    )

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.send_window = send_window
        self.recv_window = STREAM_WINDOW
        #: bytes received since the last WINDOW_UPDATE for this stream
        self.unacked = 0
        self.remote_closed = False
        self.local_closed = False
        #: DATA waiting for flow-control window, and the trailers to send after it
        self.pending: deque[memoryview] = deque()
        self.pending_end: bytes | None = None
        #: a writer waiting for ``pending`` to empty
        self.drained: asyncio.Future | None = None
        self.call: Any = None

    def wake(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)


class H2Protocol(asyncio.Protocol):
    """One HTTP/2 server connection."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self._buf = bytearray()
        self._preface = False
        self.handshaken = False
        self._decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        self._table = _Table()
        self._decoder.header_table = self._table
        self._blocks: dict[bytes, Any] = {}
        self._blocks_generation = 0
        #: a header block still arriving in CONTINUATION frames: (stream id, flags, parts)
        self._continued: tuple[int, int, list[bytes]] | None = None
        self.last_stream_id = 0
        self.goaway_sent = False
        # the peer's settings
        self.peer_window = 65535
        self.peer_max_frame = 16384
        self.send_window = 65535  # the connection's
        self._conn_unacked = 0
        self._write_paused = False
        self._drained: asyncio.Future | None = None
        #: whether the server sent headers or data since the last PING it got (ping policy)
        self.sent_since_ping = True

    # ---- asyncio ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        settings = b"".join(
            _SETTING.pack(k, v)
            for k, v in (
                (S_MAX_CONCURRENT_STREAMS, MAX_STREAMS),
                (S_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (S_MAX_FRAME_SIZE, MAX_FRAME),
                (S_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST),
            )
        )
        transport.write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, _U32.pack(CONNECTION_WINDOW - 65535))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.local_closed = stream.remote_closed = True
            stream.wake()
            self.on_reset(stream)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is full."""
        while self._write_paused and self.transport is not None:
            if self._drained is None or self._drained.done():
                self._drained = self.loop.create_future()
            await self._drained

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        buf = self._buf
        buf += data
        try:
            if not self._preface:
                if len(buf) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buf)):
                        raise ConnectionError_(PROTOCOL_ERROR, "bad connection preface")
                    return
                if buf[: len(PREFACE)] != PREFACE:
                    raise ConnectionError_(PROTOCOL_ERROR, "bad connection preface")
                self._preface = True
                del buf[: len(PREFACE)]
            pos = self._frames(buf)
            if pos:
                del buf[:pos]
        except ConnectionError_ as exc:
            self.goaway(exc.code, exc.debug.encode())
            self.close()
        except hpack.HPACKError as exc:
            self.goaway(COMPRESSION_ERROR, str(exc).encode())
            self.close()

    def _frames(self, buf: bytearray) -> int:
        """Handle every complete frame in ``buf``; the bytes used."""
        pos = 0
        size = len(buf)
        view = memoryview(buf)
        try:
            while size - pos >= 9 and self.transport is not None:
                hi, lo, kind, flags, sid = _HEAD.unpack_from(buf, pos)
                length = (hi << 16) | lo
                if length > MAX_FRAME:
                    raise ConnectionError_(FRAME_SIZE_ERROR, "frame too large")
                end = pos + 9 + length
                if end > size:
                    break
                payload = view[pos + 9 : end]
                pos = end
                sid &= 0x7FFFFFFF
                if self._continued is not None and kind != CONTINUATION:
                    raise ConnectionError_(PROTOCOL_ERROR, "expected CONTINUATION")
                if not self.handshaken and kind != SETTINGS:
                    raise ConnectionError_(PROTOCOL_ERROR, "expected SETTINGS first")
                if kind == DATA:
                    self._data(sid, flags, payload)
                elif kind == HEADERS:
                    self._headers(sid, flags, payload)
                elif kind == CONTINUATION:
                    self._continuation(sid, flags, payload)
                elif kind == SETTINGS:
                    self._settings(sid, flags, payload)
                elif kind == WINDOW_UPDATE:
                    self._window_update(sid, payload)
                elif kind == PING:
                    self._ping(sid, flags, payload)
                elif kind == RST_STREAM:
                    self._rst_stream(sid, payload)
                elif kind == GOAWAY:
                    if sid:
                        raise ConnectionError_(PROTOCOL_ERROR, "GOAWAY on a stream")
                elif kind == PRIORITY:
                    if not sid or length != 5:
                        raise ConnectionError_(PROTOCOL_ERROR, "bad PRIORITY")
                elif kind == PUSH_PROMISE:
                    raise ConnectionError_(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
                # unknown frame types are ignored (RFC 9113 §4.1)
        finally:
            view.release()
        return pos

    # ---- frames ----------------------------------------------------------------------------

    def _data(self, sid: int, flags: int, payload: memoryview) -> None:
        n = len(payload)
        if not sid:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        self._conn_unacked += n
        if self._conn_unacked > CONNECTION_WINDOW:
            raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window exceeded")
        if self._conn_unacked > CONNECTION_WINDOW // 2:
            self.write(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._conn_unacked)))
            self._conn_unacked = 0
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            if sid > self.last_stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "DATA on an idle stream")
            if stream is not None:
                self.reset(stream, STREAM_CLOSED)
            return  # a stream closed (or reset) meanwhile
        if flags & PADDED:
            payload = _unpad(payload)
        stream.unacked += n
        if stream.unacked > STREAM_WINDOW:
            self.reset(stream, FLOW_CONTROL_ERROR)
            return
        end = bool(flags & END_STREAM)
        if end:
            stream.remote_closed = True
        elif stream.unacked > STREAM_WINDOW // 2:
            self.write(frame(WINDOW_UPDATE, 0, sid, _U32.pack(stream.unacked)))
            stream.unacked = 0
        self.on_data(stream, payload, end)
        self._maybe_forget(stream)

    def _headers(self, sid: int, flags: int, payload: memoryview) -> None:
        if not sid or not sid & 1:
            raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on an even stream")
        if flags & PADDED:
            payload = _unpad(payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise ConnectionError_(FRAME_SIZE_ERROR, "short HEADERS")
            payload = payload[5:]
        if flags & END_HEADERS:
            self._block(sid, flags, bytes(payload))
        else:
            self._continued = (sid, flags, [bytes(payload)])

    def _continuation(self, sid: int, flags: int, payload: memoryview) -> None:
        continued = self._continued
        if continued is None or continued[0] != sid:
            raise ConnectionError_(PROTOCOL_ERROR, "unexpected CONTINUATION")
        parts = continued[2]
        parts.append(bytes(payload))
        if sum(map(len, parts)) > MAX_HEADER_LIST:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            self._continued = None
            self._block(sid, continued[1], b"".join(parts))

    def _block(self, sid: int, flags: int, block: bytes) -> None:
        """A complete header block on stream ``sid``."""
        head = self._decode(block)
        end = bool(flags & END_STREAM)
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client
            if not end:
                raise ConnectionError_(PROTOCOL_ERROR, "trailers without END_STREAM")
            if not stream.remote_closed:
                stream.remote_closed = True
                self.on_data(stream, memoryview(b""), True)
                self._maybe_forget(stream)
            return
        if sid <= self.last_stream_id:
            if sid in self.streams:
                return
            raise ConnectionError_(STREAM_CLOSED, "HEADERS on a closed stream")
        self.last_stream_id = sid
        stream = Stream(sid, self.peer_window)
        if self.goaway_sent or len(self.streams) >= MAX_STREAMS:
            self.write(frame(RST_STREAM, 0, sid, _U32.pack(REFUSED_STREAM)))
            return
        self.streams[sid] = stream
        stream.remote_closed = end
        self.on_headers(stream, head, end)
        self._maybe_forget(stream)

    def _decode(self, block: bytes) -> Any:
        """The subclass's :meth:`head` of ``block``; kept while the dynamic table is unchanged."""
        table = self._table
        generation = table.generation
        if generation != self._blocks_generation:
            self._blocks.clear()
            self._blocks_generation = generation
        head = self._blocks.get(block)
        if head is not None:
            return head
        headers = self._decoder.decode(block, raw=True)
        head = self.head(headers)  # type: ignore[arg-type]
        if table.generation == generation:  # the block left the table as it was
            if len(self._blocks) >= _BLOCKS_MAX:
                self._blocks.clear()
            self._blocks[block] = head
        return head

    def _settings(self, sid: int, flags: int, payload: memoryview) -> None:
        if sid:
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if len(payload):
                raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "bad SETTINGS length")
        self.handshaken = True
        for i in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, i)
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "window too large")
                delta = value - self.peer_window
                self.peer_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == S_MAX_FRAME_SIZE:
                if not 16384 <= value <= 2**24 - 1:
                    raise ConnectionError_(PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
            elif key == S_ENABLE_PUSH and value > 1:
                raise ConnectionError_(PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
            # the server's header blocks never use the dynamic table: its size is moot
        self.write(frame(SETTINGS, ACK, 0))
        self._flush_pending()

    def _window_update(self, sid: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        (increment,) = _U32.unpack(payload)
        increment &= 0x7FFFFFFF
        if not sid:
            if not increment:
                raise ConnectionError_(PROTOCOL_ERROR, "zero WINDOW_UPDATE")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "window too large")
            self._flush_pending()
            return
        stream = self.streams.get(sid)
        if stream is None:
            return
        if not increment:
            self.reset(stream, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self.reset(stream, FLOW_CONTROL_ERROR)
            return
        if stream.pending or stream.pending_end is not None:
            self._send_pending(stream)

    def _ping(self, sid: int, flags: int, payload: memoryview) -> None:
        if sid:
            raise ConnectionError_(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionError_(FRAME_SIZE_ERROR, "bad PING")
        if flags & ACK:
            self.on_ping_ack(bytes(payload))
            return
        if not self.on_ping():
            return
        self.write(frame(PING, ACK, 0, bytes(payload)))

    def _rst_stream(self, sid: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "bad RST_STREAM")
        if not sid or sid > self.last_stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        stream = self.streams.pop(sid, None)
        if stream is not None:
            stream.local_closed = stream.remote_closed = True
            stream.pending.clear()
            stream.wake()
            self.on_reset(stream)

    # ---- sending ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def headers_frames(self, stream: Stream, block: bytes, end: bool) -> list[bytes]:
        """HEADERS (and CONTINUATION) frames carrying ``block``."""
        limit = self.peer_max_frame
        flags = END_STREAM if end else 0
        if len(block) <= limit:
            return [frame(HEADERS, flags | END_HEADERS, stream.id, block)]
        out = [frame(HEADERS, flags, stream.id, block[:limit])]
        for i in range(limit, len(block), limit):
            last = i + limit >= len(block)
            piece = block[i : i + limit]
            out.append(frame(CONTINUATION, END_HEADERS if last else 0, stream.id, piece))
        return out

    def send(
        self,
        stream: Stream,
        head: bytes | None,
        data: tuple[bytes, ...] | list[bytes],
        trailers: bytes | None,
    ) -> None:
        """Send on ``stream``: a header block, DATA (as the windows allow: the rest waits for
        WINDOW_UPDATE) and trailers that end the stream (after all the DATA)."""
        if stream.local_closed or self.transport is None:
            return
        self.sent_since_ping = True
        out: list[bytes | memoryview] = []
        if head is not None:
            out += self.headers_frames(stream, head, False)
        for chunk in data:
            if chunk:
                stream.pending.append(memoryview(chunk))
        if trailers is not None:
            stream.pending_end = trailers
        self._send_pending(stream, out)

    def _send_pending(self, stream: Stream, out: list[bytes | memoryview] | None = None) -> None:
        out = [] if out is None else out
        pending = stream.pending
        while pending:
            window = min(self.send_window, stream.send_window)
            if window <= 0:
                break
            chunk = pending[0]
            n = min(len(chunk), window, self.peer_max_frame)
            if n == len(chunk):
                pending.popleft()
            else:
                pending[0] = chunk[n:]
                chunk = chunk[:n]
            self.send_window -= n
            stream.send_window -= n
            out.append(_HEAD.pack(n >> 16, n & 0xFFFF, DATA, 0, stream.id))
            out.append(chunk)
        if not pending:
            stream.wake()
            if stream.pending_end is not None:
                out += self.headers_frames(stream, stream.pending_end, True)
                stream.pending_end = None
                stream.local_closed = True
        if out and self.transport is not None:
            if sum(map(len, out)) <= _JOIN:
                self.transport.write(b"".join(out))
            else:
                self.transport.writelines(out)
        if stream.local_closed:
            if not stream.remote_closed:
                # the answer is complete: the client need send no more (RFC 9113 §8.1)
                self.write(frame(RST_STREAM, 0, stream.id, _U32.pack(NO_ERROR)))
                stream.remote_closed = True
            self._maybe_forget(stream)

    def _flush_pending(self) -> None:
        for stream in list(self.streams.values()):
            if stream.pending or stream.pending_end is not None:
                self._send_pending(stream)
                if self.send_window <= 0:
                    break

    def reset(self, stream: Stream, code: int) -> None:
        """RST_STREAM ``code``: the stream is over both ways."""
        if self.streams.pop(stream.id, None) is None:
            return
        stream.local_closed = stream.remote_closed = True
        stream.pending.clear()
        stream.wake()
        self.write(frame(RST_STREAM, 0, stream.id, _U32.pack(code)))
        self.on_reset(stream)

    def _maybe_forget(self, stream: Stream) -> None:
        if stream.local_closed and stream.remote_closed:
            self.streams.pop(stream.id, None)
            self.on_closed(stream)

    def goaway(self, code: int = NO_ERROR, debug: bytes = b"") -> None:
        """No new streams: those up to the last one begun are still served."""
        self.goaway_sent = True
        self.write(frame(GOAWAY, 0, 0, _U32.pack(self.last_stream_id) + _U32.pack(code) + debug))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # ---- the subclass's --------------------------------------------------------------------

    def head(self, headers: list[tuple[bytes, bytes]]) -> Any:
        return headers

    def on_headers(self, stream: Stream, head: Any, end: bool) -> None:
        self.reset(stream, REFUSED_STREAM)

    def on_data(self, stream: Stream, data: memoryview, end: bool) -> None:
        pass

    def on_reset(self, stream: Stream) -> None:
        """``stream`` ends without an answer: reset by the client or the connection lost."""

    def on_closed(self, stream: Stream) -> None:
        """``stream`` ended normally, both ways."""

    def on_ping(self) -> bool:
        """A PING arrived; False to leave it unanswered (the subclass closed the connection)."""
        return True

    def on_ping_ack(self, payload: bytes) -> None:
        pass


def _unpad(payload: memoryview) -> memoryview:
    if not len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "bad padding")
    pad = payload[0]
    if pad >= len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "bad padding")
    return payload[1 : len(payload) - pad]
