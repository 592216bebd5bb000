"""The lean gRPC front's reading (naiad.grpc.h2.H2Protocol as an asyncio BufferedProtocol): the
rest of a large DATA frame is read straight into the memory its consumer offers
(``data_sink`` / ``on_placed``), whatever the reads' sizes; everything else goes through the
connection's read buffer (``on_data``). The reads are made as a transport makes them: into the
buffer ``get_buffer`` returns, at most its length, then ``buffer_updated``."""

from __future__ import annotations

import asyncio

import pytest
from naiad.grpc import h2, h2frames

PREFACE_AND_SETTINGS = h2frames.PREFACE + h2frames.frame(h2frames.SETTINGS, 0, 0)


class _Transport:
    """What the protocol writes, kept."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, data: list) -> None:
        for piece in data:
            self.out += piece

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> None:
        return None


class _Collect(h2.H2Protocol):
    """Each stream's message in memory of the size its first DATA says (as the front does)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.memory: dict[int, bytearray] = {}
        self.fill: dict[int, int] = {}
        self.ended: list[int] = []
        self.placed = 0
        self.read_size = 4096  # small, so that frames straddle the reads

    def read_buffer(self) -> memoryview:
        return memoryview(bytearray(self.read_size))

    def on_headers(self, stream: h2frames.Stream, head: object, end: bool) -> None:
        self.memory[stream.id] = bytearray(self.size)
        self.fill[stream.id] = 0

    def on_data(self, stream: h2frames.Stream, data: memoryview, end: bool) -> None:
        at = self.fill[stream.id]
        self.memory[stream.id][at : at + len(data)] = data
        self.fill[stream.id] = at + len(data)
        if end:
            self.ended.append(stream.id)

    def data_sink(self, sid: int, n: int) -> memoryview | None:
        at = self.fill[sid]
        return memoryview(self.memory[sid])[at : at + n]

    def on_placed(self, stream: h2frames.Stream, n: int, end: bool) -> None:
        self.fill[stream.id] += n
        self.placed += n
        if end:
            self.ended.append(stream.id)


def _feed(proto: h2.H2Protocol, data: bytes, cuts: list[int]) -> None:
    """``data`` read in reads of the sizes in ``cuts`` (cycled), each at most what the
    buffer given for it holds; a cut of 0 is a read that found nothing (no buffer_updated)."""
    pos, i = 0, 0
    while pos < len(data):
        buf = proto.get_buffer(-1)
        if cuts[i % len(cuts)] == 0:
            i += 1
            continue
        n = min(cuts[i % len(cuts)], len(buf), len(data) - pos)
        i += 1
        buf[:n] = data[pos : pos + n]
        pos += n
        proto.buffer_updated(n)


def _headers(sid: int) -> bytes:
    block = h2frames.encode_headers([(b":method", b"POST"), (b":path", b"/x")])
    return h2frames.frame(h2frames.HEADERS, h2frames.END_HEADERS, sid, block)


def _run(size: int, wire: bytes, cuts: list[int]) -> tuple[_Collect, _Transport]:
    async def go() -> tuple[_Collect, _Transport]:
        proto = _Collect(size)
        transport = _Transport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        _feed(proto, wire, cuts)
        proto.flush()
        return proto, transport

    return asyncio.run(go())


@pytest.mark.parametrize(
    "cuts",
    [[1], [7], [9, 3], [4096], [100_000], [5, 16_384, 1, 65_536], [17, 40_000, 9], [0, 3000, 0, 1]],
)
def test_large_data_frames_read_in_any_cuts(cuts):
    """Two streams' 100 KB messages in DATA frames of assorted sizes (a padded one among them,
    a PING and a WINDOW_UPDATE between), read in reads of every size: each message arrives
    whole, the unpadded large frames' rests mostly placed, and the PING is answered."""
    size = 100_000
    bodies = {1: bytes(range(256)) * (size // 256) + b"\x01" * (size % 256)}
    bodies[3] = bytes(reversed(bodies[1]))
    wire = PREFACE_AND_SETTINGS + _headers(1) + _headers(3)
    frame = h2frames.frame
    for sid, body in bodies.items():
        pieces = [body[:20_000], body[20_000:20_003], body[20_003:60_000], body[60_000:]]
        for j, piece in enumerate(pieces):
            last = h2frames.END_STREAM if j == len(pieces) - 1 else 0
            if j == 2 and sid == 3:  # a padded large frame: read through the buffer
                padded = b"\x05" + piece + b"\x00" * 5
                wire += frame(h2frames.DATA, last | h2frames.PADDED, sid, padded)
            else:
                wire += frame(h2frames.DATA, last, sid, piece)
            if j == 1:
                wire += frame(h2frames.PING, 0, 0, b"12345678")
                wire += frame(h2frames.WINDOW_UPDATE, 0, 0, (1000).to_bytes(4, "big"))
    proto, transport = _run(size, wire, cuts)
    assert sorted(proto.ended) == [1, 3]
    for sid, body in bodies.items():
        assert proto.fill[sid] == size
        assert bytes(proto.memory[sid]) == body
    if max(cuts) > 1:
        assert proto.placed > size // 2  # most of the large frames' bytes
    assert h2frames.frame(h2frames.PING, h2frames.ACK, 0, b"12345678") in transport.out
    assert not transport.closed


class _Holding(_Collect):
    """A consumer behind: its stream's window is not refilled."""

    def on_headers(self, stream: h2frames.Stream, head: object, end: bool) -> None:
        super().on_headers(stream, head, end)
        self.hold(stream, 1)


def test_flow_control_counts_placed_bytes():
    """Bytes read into the consumer's memory count against the windows as the others do: a
    stream sending past its window is reset (FLOW_CONTROL_ERROR)."""
    window = h2frames.STREAM_WINDOW
    body = b"z" * (1 << 20)  # frames of the largest size the server takes
    wire = PREFACE_AND_SETTINGS + _headers(1)
    sent = 0
    while sent <= window:
        wire += h2frames.frame(h2frames.DATA, 0, 1, body)
        sent += len(body)

    async def go() -> tuple[_Collect, _Transport]:
        proto = _Holding(sent)
        transport = _Transport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        _feed(proto, wire, [1 << 20])
        proto.flush()
        return proto, transport

    proto, transport = asyncio.run(go())
    assert proto.placed > window // 2
    rst = h2frames.frame(h2frames.RST_STREAM, 0, 1, h2frames.U32.pack(h2frames.FLOW_CONTROL_ERROR))
    assert rst in transport.out
    assert 1 not in proto.streams


def test_a_sink_refused_reads_through_the_buffer():
    """A consumer that offers no memory (data_sink None) gets every byte through on_data."""

    class _NoSink(_Collect):
        def data_sink(self, sid: int, n: int) -> memoryview | None:
            return None

    async def go() -> _NoSink:
        proto = _NoSink(50_000)
        proto.connection_made(_Transport())  # type: ignore[arg-type]
        body = bytes(range(250)) * 200
        wire = PREFACE_AND_SETTINGS + _headers(1)
        wire += h2frames.frame(h2frames.DATA, h2frames.END_STREAM, 1, body)
        _feed(proto, wire, [3000, 1])
        assert bytes(proto.memory[1]) == body
        return proto

    proto = asyncio.run(go())
    assert proto.placed == 0 and proto.ended == [1]
