"""CPU time per ModelInfer through naiad's whole lean gRPC path, in-process, without sockets.

A naiad server runs in this process (uvloop, the model repository given, the ONNX models of
``anchors/models/make_repo.py``); one :class:`naiad.grpc.front.GrpcProtocol` of its gRPC
endpoint gets, call after call (concurrency 1, or ``-c N`` calls in flight on the connection),
the bytes perf_analyzer's client sends (HEADERS with the same header block each time, the
message in one DATA frame, and the two WINDOW_UPDATE frames grpc's client sends after each
answer), read as a transport reads them (into the protocol's buffer when it is a
BufferedProtocol, else as bytes; ``--read`` bytes at most a read, uvloop's 256 KiB by default),
written to a transport that only notes where each answer ends. The figure is the
process's CPU time (every thread: loop, instance, onnxruntime) per call, which a machine
shared with other work moves much less than wall-clock rates; the event loop's thread's CPU time
per call (the front, the data plane, the hand-offs: onnxruntime's threads left out); and the
wall time per call.

    .venv/bin/python bench/grpc_inproc.py REPO [--model simple] [-n 3000] [-c 1] [--rounds 3]
        [--profile FILE]   (cProfile of the loop thread over the last round)

Run another checkout's code with ``PYTHONPATH=<checkout>/core``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import hpack
import numpy as np

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


def _message(model: str, dp) -> bytes:
    """perf_analyzer's request for ``model``: every input raw, every output asked for."""
    from naiad.grpc import grpc_service_pb2 as pb

    meta = dp.model_metadata(model)
    msg = pb.ModelInferRequest(model_name=model)
    for t in meta["inputs"]:
        shape = [1 if d == -1 else d for d in t["shape"]]
        msg.inputs.add(name=t["name"], datatype=t["datatype"], shape=shape)
        dtype = {"FP32": np.float32, "INT32": np.int32}[t["datatype"]]
        msg.raw_input_contents.append(np.ones(shape, dtype).tobytes())
    for t in meta["outputs"]:
        msg.outputs.add(name=t["name"])
    return msg.SerializeToString()


class _Transport:
    """Notes the end of each answer (its trailers) and wakes the waiting caller."""

    def __init__(self, trailers: bytes) -> None:
        self.trailers = trailers
        self.answered = 0
        self.written = 0
        self.event: asyncio.Event | None = None

    def _saw(self, data) -> None:
        self.written += len(data)
        n = bytes(data).count(self.trailers) if len(data) < 1 << 16 else 0
        if n:
            self.answered += n
            if self.event is not None:
                self.event.set()

    def write(self, data) -> None:
        self._saw(data)

    def writelines(self, pieces) -> None:
        for p in pieces:
            self._saw(p)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str):
        return None

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def run(args: argparse.Namespace) -> None:
    from naiad.grpc import calls, front, h2frames
    from naiad.server import Server

    parser_args = [
        "--model-repository",
        args.repo,
        "--http-port",
        str(args.port),
        "--grpc-port",
        str(args.port + 1),
        "--metrics-port",
        str(args.port + 2),
        "--http-address",
        "127.0.0.1",
        "--log-warning=false",
        "--log-info=false",
    ]
    from naiad.cli import build_parser, serve_config

    config = serve_config(build_parser().parse_args(["serve", *parser_args]))
    server = Server(config)
    await server.start()
    try:
        endpoint = server._grpc
        assert isinstance(endpoint, front.LeanEndpoint)
        proto = front.GrpcProtocol(endpoint)
        transport = _Transport(calls.OK_TRAILERS)
        buffered = hasattr(proto, "get_buffer")

        def feed(data: bytes) -> None:
            """``data`` as the transport reads it: into the protocol's buffer (a
            BufferedProtocol) or as bytes, at most ``--read`` bytes a read (uvloop's size)."""
            pos, view = 0, memoryview(data)
            while pos < len(data):
                if buffered:
                    buf = proto.get_buffer(-1)
                    n = min(len(buf), args.read, len(data) - pos)
                    buf[:n] = view[pos : pos + n]  # the kernel's copy
                    proto.buffer_updated(n)
                else:
                    n = min(args.read, len(data) - pos)
                    proto.data_received(view[pos : pos + n])  # type: ignore[arg-type]
                pos += n

        proto.connection_made(transport)  # type: ignore[arg-type]
        window = (4).to_bytes(2, "big") + (4 << 20).to_bytes(4, "big")
        proto.data_received(
            h2frames.PREFACE
            + h2frames.frame(h2frames.SETTINGS, 0, 0, window)
            + h2frames.frame(h2frames.WINDOW_UPDATE, 0, 0, (4 << 20).to_bytes(4, "big"))
        )
        body = _message(args.model, server.dataplane)
        body = b"\x00" + len(body).to_bytes(4, "big") + body
        encoder = hpack.Encoder()
        blocks = [encoder.encode(HEADERS), encoder.encode(HEADERS)]  # then indexed
        sid = 1

        def request() -> bytes:
            nonlocal sid
            block = blocks[0] if sid == 1 else blocks[1]
            out = h2frames.frame(h2frames.HEADERS, h2frames.END_HEADERS, sid, block)
            out += h2frames.frame(h2frames.DATA, h2frames.END_STREAM, sid, body)
            sid += 2
            return out

        def credit(n: int) -> bytes:
            """The client's WINDOW_UPDATEs after ``n`` answers: the connection's (as many bytes
            as were written since the last: at least the DATA's) and ``n`` more for streams
            already closed, as grpc's client sends them."""
            written, transport.written = transport.written, 0
            one = h2frames.frame(h2frames.WINDOW_UPDATE, 0, 0, written.to_bytes(4, "big"))
            other = h2frames.frame(h2frames.WINDOW_UPDATE, 0, sid - 2, (200).to_bytes(4, "big"))
            return one + other * n

        async def calls_of(n: int) -> None:
            transport.event = asyncio.Event()
            target = transport.answered + n
            inflight = 0
            while transport.answered < target:
                sent_total = transport.answered + inflight
                burst = b""
                while inflight < args.concurrency and sent_total < target:
                    burst += request()
                    inflight += 1
                    sent_total += 1
                if burst:
                    feed(burst)
                before = transport.answered
                while transport.answered == before:
                    transport.event.clear()
                    await transport.event.wait()
                done = transport.answered - before
                inflight -= done
                feed(credit(done))

        await calls_of(200)  # warm-up: plans made, caches filled
        results = []
        for r in range(args.rounds):
            prof = None
            if args.profile and r == args.rounds - 1:
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
            c0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
            await calls_of(args.n)
            c1, t1, w1 = time.process_time(), time.thread_time(), time.perf_counter()
            if prof is not None:
                prof.disable()
                prof.dump_stats(args.profile)
            n = args.n
            results.append((1e6 * (c1 - c0) / n, 1e6 * (t1 - t0) / n, 1e6 * (w1 - w0) / n))
        for cpu, loop_cpu, wall in results:
            print(
                f"{args.model} c={args.concurrency}: {cpu:7.1f} µs CPU/call (loop thread "
                f"{loop_cpu:6.1f}) {wall:7.1f} µs wall/call"
            )
        print(
            f"best: {min(r[0] for r in results):.1f} µs CPU/call, loop thread "
            f"{min(r[1] for r in results):.1f}"
        )
        proto.connection_lost(None)
    finally:
        await server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", type=Path)
    ap.add_argument("--model", default="simple")
    ap.add_argument("-n", type=int, default=3000)
    ap.add_argument("-c", "--concurrency", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--port", type=int, default=28900)
    ap.add_argument("--read", type=int, default=1 << 18, help="bytes a read at most")
    ap.add_argument("--profile")
    args = ap.parse_args()
    args.repo = str(args.repo)
    import uvloop

    uvloop.run(run(args))


if __name__ == "__main__":
    main()
