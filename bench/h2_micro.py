"""Per-request Python cost of the lean gRPC front's HTTP/2 layer, in-process (no sockets).

What one unary call costs to frame and unframe: the request's HEADERS + DATA in, the response's
HEADERS + DATA + trailers out, as perf_analyzer sends them in a loop (the same header block each
time, indexed fields only, after the first call), through

- ``naiad-h2``: naiad's :class:`naiad.grpc.h2.H2Protocol` (hpack, and its cache of blocks);
- ``naiad-h2-nocache``: the same with the block cache off (hpack decodes every block);
- ``hpack-decode``: hpack's decoder alone on the block;
- ``h2``: python-hyper's ``h2`` state machine (``H2Connection``) doing the same exchange, if it
  is installed (``pip install h2``; not a naiad dependency).

    python bench/h2_micro.py [--calls 20000]

Prints µs per call (best of 3 rounds). The machine is shared: read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import hpack
from naiad.grpc import h2 as nh2
from naiad.grpc import h2frames as wire

HEADERS = [
    (":scheme", "http"),
    (":method", "POST"),
    (":authority", "127.0.0.1:8001"),
    (":path", "/inference.GRPCInferenceService/ModelInfer"),
    ("te", "trailers"),
    ("content-type", "application/grpc"),
    ("user-agent", "grpc-c++/1.62.1 grpc-c/39.0.0 (linux; chttp2)"),
    ("grpc-accept-encoding", "identity, deflate, gzip"),
]
BODY = b"\x00" + (150).to_bytes(4, "big") + b"x" * 150
RESPONSE = b"\x00" + (130).to_bytes(4, "big") + b"y" * 130
HEAD = wire.encode_headers([(b":status", b"200"), (b"content-type", b"application/grpc")])
TRAILERS = wire.encode_headers([(b"grpc-status", b"0")])
#: the client's start: preface, SETTINGS with the largest stream window, and as much again for
#: the connection (so that flow control never holds a response)
START = (
    wire.PREFACE
    + wire.frame(wire.SETTINGS, 0, 0, (4).to_bytes(2, "big") + (2**31 - 1).to_bytes(4, "big"))
    + wire.frame(wire.WINDOW_UPDATE, 0, 0, (2**31 - 1 - 65535).to_bytes(4, "big"))
)


class _Sink:
    """A transport that drops what is written."""

    def write(self, data: bytes) -> None:
        pass

    def writelines(self, data: list) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> None:
        return None

    def close(self) -> None:
        pass


class _Echo(nh2.H2Protocol):
    def on_headers(self, stream: wire.Stream, head: object, end: bool) -> None:
        stream.call = bytearray()

    def on_data(self, stream: wire.Stream, data: memoryview, end: bool) -> None:
        stream.call += data
        if end:
            self.send(stream, HEAD, (RESPONSE,), TRAILERS)


def _requests(calls: int) -> list[bytes]:
    encoder = hpack.Encoder()
    out = []
    for i in range(calls):
        sid = 2 * i + 1
        block = encoder.encode(HEADERS)
        out.append(
            wire.frame(wire.HEADERS, wire.END_HEADERS, sid, block)
            + wire.frame(wire.DATA, wire.END_STREAM, sid, BODY)
        )
    return out


def naiad_h2(calls: int, cache: bool) -> float:
    async def run() -> float:
        proto = _Echo()
        proto.connection_made(_Sink())  # type: ignore[arg-type]
        proto.data_received(START)
        data = _requests(calls)
        blocks = proto._blocks
        start = time.perf_counter()
        for chunk in data:
            proto.data_received(chunk)
            proto.flush()  # what the end of the loop's turn does
            if not cache:
                blocks.clear()  # every block is decoded again
        return time.perf_counter() - start

    return asyncio.run(run())


def hpack_decode(calls: int) -> float:
    encoder = hpack.Encoder()
    decoder = hpack.Decoder()
    decoder.decode(encoder.encode(HEADERS))
    block = encoder.encode(HEADERS)
    start = time.perf_counter()
    for _ in range(calls):
        decoder.decode(block, raw=True)
    return time.perf_counter() - start


def h2_library(calls: int) -> float | None:
    try:
        import h2.config
        import h2.connection
        import h2.events
    except ImportError:
        return None
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    conn.data_to_send()
    conn.receive_data(START)
    conn.data_to_send()
    data = _requests(calls)
    response = [(":status", "200"), ("content-type", "application/grpc")]
    start = time.perf_counter()
    for chunk in data:
        for event in conn.receive_data(chunk):
            if isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if isinstance(event, h2.events.StreamEnded):
                sid = event.stream_id
                conn.send_headers(sid, response)
                conn.send_data(sid, RESPONSE)
                conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)
        conn.data_to_send()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args()
    n = args.calls
    rows = {
        "naiad-h2": lambda: naiad_h2(n, True),
        "naiad-h2-nocache": lambda: naiad_h2(n, False),
        "hpack-decode": lambda: hpack_decode(n),
        "h2": lambda: h2_library(n),
    }
    print("| layer | µs per call |\n|---|---:|")
    for name, fn in rows.items():
        times = [fn() for _ in range(3)]
        if times[0] is None:
            print(f"| {name} | (not installed) |")
            continue
        print(f"| {name} | {min(t for t in times if t is not None) / n * 1e6:.1f} |")


if __name__ == "__main__":
    main()
