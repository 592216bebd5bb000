"""The sending half of :class:`naiad.grpc.h2.H2Protocol`: header blocks, DATA within the peer's
flow-control windows (what they do not allow waits on its stream), RST_STREAM and GOAWAY."""

from __future__ import annotations

import asyncio

from .h2frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEAD,
    HEADERS,
    NO_ERROR,
    RST_STREAM,
    U32,
    Stream,
    frame,
)

#: frames of at most this many bytes in all are joined before writing
_JOIN = 1 << 16
#: frames waiting for the end of the loop's turn are written at once past this many bytes (so
#: that the transport's flow control sees them)
_HOLD = 1 << 18


class H2Sender:
    """What a connection sends; the state it reads is set up by :class:`H2Protocol`.

    Frames are written once per turn of the event loop: the answers to the calls of one
    connection that finish together (a dynamic batch, several streams) go out in one write.
    """

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    #: frames to write at the end of this turn of the loop, and their size
    _out: list[bytes | memoryview]
    _out_size = 0
    streams: dict[int, Stream]
    send_window: int
    peer_max_frame: int
    last_stream_id: int
    goaway_sent: bool
    held: int
    #: how many times headers or data were sent (keepalive's pings without data)
    sends = 0
    #: whether the server sent headers or data since the last PING it got (ping policy)
    sent_since_ping: bool

    def write(self, data: bytes) -> None:
        self._put([data])

    def _put(self, frames: list[bytes | memoryview], now: bool = False) -> None:
        """Queue ``frames`` for :meth:`flush`, due at the end of this turn of the loop; with
        ``now``, write them (after what is queued) at once."""
        if self.transport is None:
            return
        if now:
            if self._out:
                frames = self._out + frames
                self._out, self._out_size = [], 0
            if len(frames) == 1:
                self.transport.write(frames[0])
            elif sum(map(len, frames)) <= _JOIN:
                self.transport.write(b"".join(frames))
            else:
                self.transport.writelines(frames)
            return
        if not self._out:
            self.loop.call_soon(self.flush)
        self._out += frames
        self._out_size += sum(map(len, frames))
        if self._out_size > _HOLD:
            self.flush()

    def flush(self) -> None:
        """Write what is queued: one write (joined when small), the large pieces not copied."""
        out, size = self._out, self._out_size
        if not out:
            return
        self._out, self._out_size = [], 0
        if self.transport is None:
            return
        if size <= _JOIN:
            self.transport.write(b"".join(out))
        else:
            self.transport.writelines(out)

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
        data: tuple[bytes | memoryview, ...] | list[bytes | memoryview],
        trailers: bytes | None,
    ) -> None:
        """Send on ``stream``: a header block, DATA (as the windows allow: the rest waits for
        WINDOW_UPDATE) and trailers that end the stream (after all the DATA).

        The frames go out at the end of this turn of the loop (with the other streams' answers
        finished in it), or at once when they end the connection's only stream: no other
        answer can join them, and waiting for the turn's end would cost a turn of the loop."""
        if stream.local_closed or self.transport is None:
            return
        self.sent_since_ping = True
        self.sends += 1
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
        streams = self.streams
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
            out.append(HEAD.pack(n >> 16, n & 0xFFFF, DATA, 0, stream.id))
            out.append(chunk)
        now = False
        if not pending:
            stream.wake()
            if stream.pending_end is not None:
                out += self.headers_frames(stream, stream.pending_end, True)
                stream.pending_end = None
                stream.local_closed = True
                if not stream.remote_closed:
                    # the answer is complete: the client need send no more (RFC 9113 §8.1)
                    out.append(frame(RST_STREAM, 0, stream.id, U32.pack(NO_ERROR)))
                    stream.remote_closed = True
                now = len(streams) == 1 and stream.id in streams
        if out:
            self._put(out, now)
        if stream.local_closed:
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
        self.write(frame(RST_STREAM, 0, stream.id, U32.pack(code)))
        self.drop_held(stream)
        self.on_reset(stream)

    def _maybe_forget(self, stream: Stream) -> None:
        if stream.local_closed and stream.remote_closed:
            self.streams.pop(stream.id, None)
            self.drop_held(stream)
            self.on_closed(stream)

    def drop_held(self, stream: Stream) -> None:
        """``stream`` is over: what its consumer never took counts no more."""
        self.held -= stream.held
        stream.held = 0

    def goaway(self, code: int = NO_ERROR, debug: bytes = b"") -> None:
        """No new streams: those up to the last one begun are still served."""
        self.goaway_sent = True
        self.write(frame(GOAWAY, 0, 0, U32.pack(self.last_stream_id) + U32.pack(code) + debug))

    def close(self) -> None:
        if self.transport is not None:
            self.flush()
            self.transport.close()

    def on_reset(self, stream: Stream) -> None:
        """``stream`` ends without an answer: reset by the client or the connection lost."""

    def on_closed(self, stream: Stream) -> None:
        """``stream`` ended normally, both ways."""
