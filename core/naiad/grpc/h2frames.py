"""HTTP/2 (RFC 9113) wire pieces for :mod:`naiad.grpc.h2`: frame and setting numbers, frames,
header blocks naiad sends (HPACK literals, RFC 7541 §6.2.2), the dynamic table that counts its
changes, and the state of one stream."""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from typing import Any

from hpack.table import HeaderTable

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
HEAD = struct.Struct(">BHBBI")
U32 = struct.Struct(">I")
SETTING = struct.Struct(">HI")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return HEAD.pack(n >> 16, n & 0xFFFF, kind, flags, stream_id) + payload


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


class CountingTable(HeaderTable):
    """hpack's dynamic table, counting its changes (a cached block is valid while none)."""

    generation = 0

    def add(self, name: bytes, value: bytes) -> Any:
        self.generation += 1
        return super().add(name, value)

    @HeaderTable.maxsize.setter  # type: ignore[attr-defined, untyped-decorator]
    def maxsize(self, newmax: int) -> None:
        self.generation += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class H2Error(Exception):
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
        "unacked",
        "remote_closed",
        "local_closed",
        "pending",
        "pending_end",
        "drained",
        "held",
        "call",
    )

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.send_window = send_window
        #: bytes received since the last WINDOW_UPDATE for this stream
        self.unacked = 0
        self.remote_closed = False
        self.local_closed = False
        #: DATA waiting for flow-control window, and the trailers to send after it
        self.pending: deque[memoryview] = deque()
        self.pending_end: bytes | None = None
        #: a writer waiting for ``pending`` to empty
        self.drained: asyncio.Future | None = None
        #: bytes of complete messages received but not yet taken by the stream's consumer: the
        #: stream's window is not refilled while there are any (back-pressure)
        self.held = 0
        self.call: Any = None

    def wake(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)


def unpad(payload: memoryview) -> memoryview:
    if not len(payload):
        raise H2Error(PROTOCOL_ERROR, "bad padding")
    pad = payload[0]
    if pad >= len(payload):
        raise H2Error(PROTOCOL_ERROR, "bad padding")
    return payload[1 : len(payload) - pad]
