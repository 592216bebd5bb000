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

The connection is an :class:`asyncio.BufferedProtocol`: frames are read into a buffer of the
connection's, except the rest of a large DATA frame, which the subclass may have read straight
into the memory where its message is kept (:meth:`H2Protocol.data_sink`, then
:meth:`H2Protocol.on_placed`): a large request is then not copied from what was read.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import hpack

from ..sockets import no_delay
from .h2frames import (
    ACK,
    COMPRESSION_ERROR,
    CONNECTION_WINDOW,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEAD,
    HEADERS,
    MAX_FRAME,
    MAX_HEADER_LIST,
    MAX_STREAMS,
    MAX_WINDOW,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    S_ENABLE_PUSH,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_FRAME_SIZE,
    S_MAX_HEADER_LIST_SIZE,
    SETTING,
    SETTINGS,
    STREAM_CLOSED,
    STREAM_WINDOW,
    U32,
    WINDOW_UPDATE,
    CountingTable,
    H2Error,
    Stream,
    frame,
    unpad,
)
from .h2send import H2Sender

log = logging.getLogger(__name__)

#: decoded header blocks kept per connection
_BLOCKS_MAX = 64
#: DATA frames longer than this are handed on piece by piece as they arrive
_STREAM_DATA = 1 << 14
#: the size of the buffer frames are read into
READ_SIZE = 1 << 16


class H2Protocol(H2Sender, asyncio.BufferedProtocol):
    """One HTTP/2 server connection."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._out = []
        self.streams: dict[int, Stream] = {}
        self._buf = bytearray()
        self._preface = False
        self.handshaken = False
        self._decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        self._table = CountingTable()
        self._decoder.header_table = self._table
        self._blocks: dict[bytes, Any] = {}
        self._blocks_generation = 0
        #: a header block still arriving in CONTINUATION frames: (stream id, flags, parts)
        self._continued: tuple[int, int, list[bytes]] | None = None
        #: a large DATA frame handed on as it arrives: its stream, flags and bytes still to come
        self._data_sid = self._data_flags = self._data_left = 0
        #: what the transport reads into: the connection's buffer (made on the first read), or
        #: the subclass's memory for the rest of a large DATA frame (:meth:`data_sink`)
        self._read: memoryview | None = None
        self._sink: memoryview | None = None
        self.last_stream_id = 0
        self.goaway_sent = False
        # the peer's settings
        self.peer_window = 65535
        self.peer_max_frame = 16384
        self.send_window = 65535  # the connection's
        self._conn_unacked = 0
        #: bytes of complete messages the consumers of all streams have not taken yet
        self.held = 0
        self._write_paused = False
        self._drained: asyncio.Future | None = None
        #: whether the server sent headers or data since the last PING it got (ping policy)
        self.sent_since_ping = True

    # ---- asyncio ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        no_delay(transport)
        settings = b"".join(
            SETTING.pack(k, v)
            for k, v in (
                (S_MAX_CONCURRENT_STREAMS, MAX_STREAMS),
                (S_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (S_MAX_FRAME_SIZE, MAX_FRAME),
                (S_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST),
            )
        )
        transport.write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, U32.pack(CONNECTION_WINDOW - 65535))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._sink = None
        self._out, self._out_size = [], 0
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.local_closed = stream.remote_closed = True
            stream.wake()
            self.drop_held(stream)
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

    def get_buffer(self, sizehint: int) -> memoryview:
        # a read that gave nothing (no buffer_updated) leaves the last answer here: not reused
        self._sink = None
        if self._data_left and self.transport is not None:
            sink = self.data_sink(self._data_sid, self._data_left)
            if sink is not None and len(sink):
                self._sink = sink
                return sink
        if self._read is None:
            self._read = self.read_buffer()
        return self._read

    def buffer_updated(self, nbytes: int) -> None:
        sink = self._sink
        if sink is not None:
            self._sink = None
            if self.transport is None or self.transport.is_closing():
                return
            try:
                self._data_left -= nbytes
                flags = 0 if self._data_left else self._data_flags
                self._data(self._data_sid, flags, sink[:nbytes], True)
            except H2Error as exc:
                self.goaway(exc.code, exc.debug.encode())
                self.close()
            return
        assert self._read is not None
        with self._read[:nbytes] as data:
            # what the frames' consumers are handed is theirs only during the call: the
            # buffer is read into again
            self.data_received(data)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            if self._data_left:
                view = self._more_data(data)
                if not len(view):
                    return
                data = view  # type: ignore[assignment]
            buf = self._buf
            if self._preface and not buf:
                # frames straight from what was read: only an incomplete one's start is kept
                pos = self._frames(data)
                if pos < len(data):
                    buf += memoryview(data)[pos:]
                return
            buf += data
            if not self._preface:
                if len(buf) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buf)):
                        raise H2Error(PROTOCOL_ERROR, "bad connection preface")
                    return
                if buf[: len(PREFACE)] != PREFACE:
                    raise H2Error(PROTOCOL_ERROR, "bad connection preface")
                self._preface = True
                del buf[: len(PREFACE)]
            pos = self._frames(buf)
            if pos:
                del buf[:pos]
        except H2Error as exc:
            self.goaway(exc.code, exc.debug.encode())
            self.close()
        except hpack.HPACKError as exc:
            self.goaway(COMPRESSION_ERROR, str(exc).encode())
            self.close()

    def _frames(self, buf: bytes | bytearray) -> int:
        """Handle every complete frame in ``buf``; the bytes used. A large DATA frame begun at
        the end is handed on as it arrives (:meth:`_more_data`), not buffered."""
        pos = 0
        size = len(buf)
        view = memoryview(buf)
        try:
            while size - pos >= 9 and self.transport is not None:
                hi, lo, kind, flags, sid = HEAD.unpack_from(buf, pos)
                length = (hi << 16) | lo
                if length > MAX_FRAME:
                    raise H2Error(FRAME_SIZE_ERROR, "frame too large")
                end = pos + 9 + length
                if end > size:
                    if (
                        kind == DATA
                        and length > _STREAM_DATA
                        and not flags & PADDED
                        and self._continued is None
                        and self.handshaken
                    ):
                        self._data_sid, self._data_flags = sid & 0x7FFFFFFF, flags
                        self._data_left = end - size
                        self._data(self._data_sid, 0, view[pos + 9 : size])
                        pos = size
                    break
                payload = view[pos + 9 : end]
                pos = end
                sid &= 0x7FFFFFFF
                if self._continued is not None and kind != CONTINUATION:
                    raise H2Error(PROTOCOL_ERROR, "expected CONTINUATION")
                if not self.handshaken and kind != SETTINGS:
                    raise H2Error(PROTOCOL_ERROR, "expected SETTINGS first")
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
                        raise H2Error(PROTOCOL_ERROR, "GOAWAY on a stream")
                elif kind == PRIORITY:
                    if not sid or length != 5:
                        raise H2Error(PROTOCOL_ERROR, "bad PRIORITY")
                elif kind == PUSH_PROMISE:
                    raise H2Error(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
                # unknown frame types are ignored (RFC 9113 §4.1)
        finally:
            view.release()
        return pos

    def _more_data(self, data: bytes) -> memoryview:
        """The next bytes of a DATA frame being handed on as it arrives; what follows it."""
        view = memoryview(data)
        n = min(len(view), self._data_left)
        self._data_left -= n
        flags = 0 if self._data_left else self._data_flags
        if self.transport is not None:
            self._data(self._data_sid, flags, view[:n])
        return view[n:]

    # ---- frames ----------------------------------------------------------------------------

    def _data(self, sid: int, flags: int, payload: memoryview, placed: bool = False) -> None:
        """DATA on stream ``sid``; ``placed``: ``payload`` was read into the subclass's memory
        (:meth:`data_sink`)."""
        n = len(payload)
        if not sid:
            raise H2Error(PROTOCOL_ERROR, "DATA on stream 0")
        self._conn_unacked += n
        if self._conn_unacked > CONNECTION_WINDOW:
            raise H2Error(FLOW_CONTROL_ERROR, "connection window exceeded")
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            if sid > self.last_stream_id:
                raise H2Error(PROTOCOL_ERROR, "DATA on an idle stream")
            if stream is not None:
                self.reset(stream, STREAM_CLOSED)
            self.credit(None)
            return  # a stream closed (or reset) meanwhile
        if flags & PADDED:
            payload = unpad(payload)
        stream.unacked += n
        if stream.unacked > STREAM_WINDOW:
            self.reset(stream, FLOW_CONTROL_ERROR)
            self.credit(None)
            return
        end = bool(flags & END_STREAM)
        if end:
            stream.remote_closed = True
        if placed:
            self.on_placed(stream, n, end)
        else:
            self.on_data(stream, payload, end)
        self.credit(stream)
        self._maybe_forget(stream)

    def credit(self, stream: Stream | None) -> None:
        """Refill the receive windows (WINDOW_UPDATE) once half used, unless the consumers are
        behind: a stream holding messages its consumer has not taken gets no more, the
        connection none while its streams hold over half its window."""
        if self._conn_unacked > CONNECTION_WINDOW // 2 and self.held <= CONNECTION_WINDOW // 2:
            self.write(frame(WINDOW_UPDATE, 0, 0, U32.pack(self._conn_unacked)))
            self._conn_unacked = 0
        if (
            stream is not None
            and not stream.held
            and not stream.remote_closed
            and stream.unacked > STREAM_WINDOW // 2
        ):
            self.write(frame(WINDOW_UPDATE, 0, stream.id, U32.pack(stream.unacked)))
            stream.unacked = 0

    def hold(self, stream: Stream, n: int) -> None:
        """``n`` bytes of a complete message wait for ``stream``'s consumer."""
        stream.held += n
        self.held += n

    def consumed(self, stream: Stream, n: int) -> None:
        """``stream``'s consumer took a message of ``n`` bytes: the windows may refill."""
        n = min(n, stream.held)
        stream.held -= n
        self.held -= n
        if self.transport is not None:
            self.credit(stream)

    def _headers(self, sid: int, flags: int, payload: memoryview) -> None:
        if not sid or not sid & 1:
            raise H2Error(PROTOCOL_ERROR, "HEADERS on an even stream")
        if flags & PADDED:
            payload = unpad(payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise H2Error(FRAME_SIZE_ERROR, "short HEADERS")
            payload = payload[5:]
        if flags & END_HEADERS:
            self._block(sid, flags, bytes(payload))
        else:
            self._continued = (sid, flags, [bytes(payload)])

    def _continuation(self, sid: int, flags: int, payload: memoryview) -> None:
        continued = self._continued
        if continued is None or continued[0] != sid:
            raise H2Error(PROTOCOL_ERROR, "unexpected CONTINUATION")
        parts = continued[2]
        parts.append(bytes(payload))
        if sum(map(len, parts)) > MAX_HEADER_LIST:
            raise H2Error(ENHANCE_YOUR_CALM, "header block too large")
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
                raise H2Error(PROTOCOL_ERROR, "trailers without END_STREAM")
            if not stream.remote_closed:
                stream.remote_closed = True
                self.on_data(stream, memoryview(b""), True)
                self._maybe_forget(stream)
            return
        if sid <= self.last_stream_id:
            if sid in self.streams:
                return
            raise H2Error(STREAM_CLOSED, "HEADERS on a closed stream")
        self.last_stream_id = sid
        stream = Stream(sid, self.peer_window)
        if self.goaway_sent or len(self.streams) >= MAX_STREAMS:
            self.write(frame(RST_STREAM, 0, sid, U32.pack(REFUSED_STREAM)))
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
            raise H2Error(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if len(payload):
                raise H2Error(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise H2Error(FRAME_SIZE_ERROR, "bad SETTINGS length")
        self.handshaken = True
        for i in range(0, len(payload), 6):
            key, value = SETTING.unpack_from(payload, i)
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise H2Error(FLOW_CONTROL_ERROR, "window too large")
                delta = value - self.peer_window
                self.peer_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == S_MAX_FRAME_SIZE:
                if not 16384 <= value <= 2**24 - 1:
                    raise H2Error(PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
            elif key == S_ENABLE_PUSH and value > 1:
                raise H2Error(PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
            # the server's header blocks never use the dynamic table: its size is moot
        self.write(frame(SETTINGS, ACK, 0))
        self._flush_pending()

    def _window_update(self, sid: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise H2Error(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        (increment,) = U32.unpack(payload)
        increment &= 0x7FFFFFFF
        if not sid:
            if not increment:
                raise H2Error(PROTOCOL_ERROR, "zero WINDOW_UPDATE")
            was = self.send_window
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise H2Error(FLOW_CONTROL_ERROR, "window too large")
            if was <= 0:  # else no stream waits for the connection's window, only for its own
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
            raise H2Error(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise H2Error(FRAME_SIZE_ERROR, "bad PING")
        if flags & ACK:
            self.on_ping_ack(bytes(payload))
            return
        if not self.on_ping():
            return
        self.write(frame(PING, ACK, 0, bytes(payload)))

    def _rst_stream(self, sid: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise H2Error(FRAME_SIZE_ERROR, "bad RST_STREAM")
        if not sid or sid > self.last_stream_id:
            raise H2Error(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        stream = self.streams.pop(sid, None)
        if stream is not None:
            stream.local_closed = stream.remote_closed = True
            stream.pending.clear()
            stream.wake()
            self.drop_held(stream)
            self.on_reset(stream)

    # ---- the subclass's --------------------------------------------------------------------

    def head(self, headers: list[tuple[bytes, bytes]]) -> Any:
        return headers

    def on_headers(self, stream: Stream, head: Any, end: bool) -> None:
        self.reset(stream, REFUSED_STREAM)

    def on_data(self, stream: Stream, data: memoryview, end: bool) -> None:
        """DATA on ``stream`` (``end``: the client's last); ``data`` is valid during the call
        only (the connection's read buffer is read into again)."""

    def read_buffer(self) -> memoryview:
        """The buffer the connection reads frames into; what is read is handled before the
        next read (of any connection: one buffer may serve all of a loop's)."""
        return memoryview(bytearray(READ_SIZE))

    def data_sink(self, sid: int, n: int) -> memoryview | None:
        """Where the next (at most) ``n`` bytes of stream ``sid``'s DATA may be read to: a
        writable view of the subclass's memory, told of with :meth:`on_placed`; None to have
        them handed to :meth:`on_data`. Asked only in the middle of a large DATA frame."""
        return None

    def on_placed(self, stream: Stream, n: int, end: bool) -> None:
        """``n`` bytes of DATA on ``stream`` were read into the view :meth:`data_sink` gave."""

    def on_ping(self) -> bool:
        """A PING arrived; False to leave it unanswered (the subclass closed the connection)."""
        return True

    def on_ping_ack(self, payload: bytes) -> None:
        pass
