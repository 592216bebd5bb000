"""naiad's lean gRPC front: gRPC over naiad's own HTTP/2 connections (:mod:`.h2`), on the loop.

grpcio's asyncio server spends most of a small request in its own Python layer and in GIL
hand-offs with its completion-queue thread, far more than naiad's inference path. This front
reads each connection itself (as :mod:`naiad.http.fast` does for HTTP/1.1) and answers every RPC
of ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health/Check`` by calling the same
transport-free methods as the grpcio server (:mod:`.service`, :mod:`.stream`), so the answers
are the same. The method table is the generated one (``service_pb2_grpc``).

gRPC on HTTP/2: a request is a HEADERS block (``:path`` names the method; ``grpc-timeout``,
``grpc-encoding`` and the metadata) and DATA carrying length-prefixed messages (1 byte
"compressed", 4 bytes big-endian length); the answer is a HEADERS block, DATA messages and
trailers with ``grpc-status`` and ``grpc-message`` (percent-encoded), or trailers alone when it
fails before any message. A call ends early when the client resets its stream or its deadline
passes: its task is cancelled (the scheduler marks the request's ticket cancelled, as when an
HTTP client leaves).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from typing import Any

import numpy as np

from ..dataplane import DataPlane
from ..errors import NaiadError
from . import codec, h2, health_service_pb2_grpc, service_pb2_grpc
from .calls import (
    DEADLINE_EXCEEDED,
    END,
    INFLATE_OFF_LOOP,
    INTERNAL,
    OK,
    RESOURCE_EXHAUSTED,
    UNIMPLEMENTED,
    UNKNOWN,
    Call,
    CallHead,
    inflate,
    parse_error,
    parse_timeout,
    status_block,
    unbase64,
)
from .config import INT32_MAX, GrpcConfig
from .conn import GrpcConnection
from .h2frames import Stream, encode_headers
from .limits import MAX_BUFFERED, Budget, tls_context
from .options import INFERENCE_RPCS, service_options
from .service import HealthService, InferenceService

log = logging.getLogger(__name__)

_LEVELS = {"low": 1, "medium": 6, "high": 9}


class _Collector:
    """Takes the method handlers the generated ``add_*_to_server`` functions register."""

    def __init__(self) -> None:
        self.methods: dict[bytes, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        for name, handler in handlers.items():
            self.methods[f"/{service}/{name}".encode()] = (name, handler)


def method_table(inference: InferenceService, health: HealthService) -> dict[bytes, Any]:
    """``:path`` -> (RPC name, grpc method handler) from the generated registration code."""
    collector = _Collector()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(inference, collector)
    health_service_pb2_grpc.add_HealthServicer_to_server(health, collector)
    return collector.methods


def parse(head: CallHead, data: bytes | memoryview) -> Any:
    """A call's request message; ModelInfer's with its raw inputs left on the wire bytes."""
    if head.rpc == "ModelInfer":
        return codec.split_infer_request(data)
    return head.handler.request_deserializer(data)


class GrpcProtocol(GrpcConnection):
    """One gRPC client connection: its calls."""

    # ---- calls -----------------------------------------------------------------------------

    def head(self, headers: list[tuple[bytes, bytes]]) -> CallHead:
        head = CallHead()
        path = method = content_type = None
        metadata: list[tuple[str, Any]] = []
        for name, value in headers:
            if name[:1] == b":":
                if name == b":path":
                    path = value
                elif name == b":method":
                    method = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                head.timeout = parse_timeout(value)
            elif name == b"grpc-encoding":
                head.encoding = value
            elif name == b"grpc-accept-encoding":
                head.gzip_ok = b"gzip" in value
            elif name == b"te" or name.startswith(b"grpc-"):
                continue
            elif name.endswith(b"-bin"):
                metadata.append((name.decode("latin-1"), unbase64(value)))
            else:
                metadata.append((name.decode("latin-1"), value.decode("latin-1")))
        head.metadata = tuple(metadata)
        if method != b"POST":
            head.refusal = encode_headers([(b":status", b"405")])
        elif content_type is None or not content_type.startswith(b"application/grpc"):
            head.refusal = encode_headers([(b":status", b"415")])
        else:
            entry = self.front.methods.get(path or b"")
            if entry is None:
                head.refusal = status_block(UNIMPLEMENTED, "Method not found!", True)
            else:
                head.rpc, head.handler = entry
                if head.encoding not in (b"identity", b"gzip", b"deflate"):
                    head.refusal = status_block(
                        UNIMPLEMENTED,
                        f"Compression algorithm '{head.encoding.decode('latin-1')}' is not "
                        "supported",
                        True,
                    )
        return head

    def on_headers(self, stream: Stream, head: CallHead, end: bool) -> None:
        self.opened_one = True
        if head.refusal is not None:
            self.send(stream, None, (), head.refusal)
            return
        call = stream.call = Call(self, stream, head)
        call.last = self.loop.time()
        if head.timeout is not None:
            call.timer = self.loop.call_later(head.timeout, self._deadline, call)
        if head.handler.request_streaming:
            call.queue = asyncio.Queue()
            call.task = self.loop.create_task(self._streaming(call))
            if end:
                call.queue.put_nowait(END)
        elif end:
            self._unary_ready(call)

    def on_data(self, stream: Stream, data: memoryview, end: bool) -> None:
        call: Call | None = stream.call
        if call is None or call.done:
            return
        call.last = self.loop.time()
        placed = call.placed
        if placed is not None:  # the message's own memory (see _place)
            fill, n = call.fill, len(data)
            if fill + n <= len(placed):
                placed[fill : fill + n] = data
                call.fill = fill + n
                if end:
                    self._unary_ready(call)
                return
            # more than one message: as without the memory, which fails the call at its end
            call.buf = bytearray(placed[:fill])
            call.placed = None
        buf = call.buf
        buf += data
        if call.queue is not None:
            while len(buf) >= 5:
                length = int.from_bytes(buf[1:5], "big")
                if length > INT32_MAX:
                    self._fail(call, RESOURCE_EXHAUSTED, "Received message larger than max")
                    return
                if len(buf) < 5 + length:
                    self._reserve(call, length)
                    break
                message = self._message(call, buf[0], bytes(buf[5 : 5 + length]))
                del buf[: 5 + length]
                self._release(call)
                if message is None:
                    return
                self.hold(stream, 5 + length)
                call.queue.put_nowait((message, 5 + length))
            if end:
                if buf:
                    self._fail(call, INTERNAL, "Incomplete message at the end of the stream")
                    return
                call.queue.put_nowait(END)
            return
        length = int.from_bytes(buf[1:5], "big")
        if len(buf) > INT32_MAX + 5 or length > INT32_MAX:
            self._fail(call, RESOURCE_EXHAUSTED, "Received message larger than max")
        elif end:
            self._unary_ready(call)
        elif len(buf) >= 5 and self._reserve(call, length):
            self._place(call, length)

    def _place(self, call: Call, length: int) -> None:
        """A large message whose size was reserved from the front's budget: its bytes go to
        memory of its size (not touched until they arrive), where the rest of its DATA may be
        read straight to (:meth:`data_sink`) and its tensors are viewed from."""
        budget = self.front.budget
        if budget.buffered > budget.limit:  # what a connection holding it all may exceed
            return
        buf = call.buf
        placed = np.empty(5 + length, np.uint8)
        placed[: len(buf)] = np.frombuffer(buf, np.uint8)
        call.placed, call.fill = placed, len(buf)
        call.buf = bytearray()

    def data_sink(self, sid: int, n: int) -> memoryview | None:
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            return None
        call: Call | None = stream.call
        if call is None or call.done or call.placed is None:
            return None
        fill = call.fill
        return memoryview(call.placed)[fill : fill + n]  # type: ignore[arg-type]

    def on_placed(self, stream: Stream, n: int, end: bool) -> None:
        call: Call | None = stream.call
        if call is None or call.done:
            return
        call.last = self.loop.time()
        call.fill += n
        if end:
            self._unary_ready(call)

    def _unary_ready(self, call: Call) -> None:
        buf: Any = call.buf
        if call.placed is not None:
            buf, call.placed = memoryview(call.placed)[: call.fill], None
        length = int.from_bytes(buf[1:5], "big") if len(buf) >= 5 else -1
        if length != len(buf) - 5:
            self._fail(call, INTERNAL, "Expected one request message")
            return
        flag = buf[0]
        call.buf = bytearray()
        self._release(call)  # the message is handed on
        if flag and len(buf) > INFLATE_OFF_LOOP:
            call.task = self.loop.create_task(self._unary(call, None, buf))
            return
        message = self._message(call, flag, memoryview(buf)[5:])
        if message is not None:
            call.task = self.loop.create_task(self._unary(call, message))

    def _message(self, call: Call, flag: int, data: Any) -> Any:
        """The request message, or None after failing the call."""
        try:
            if flag:
                data = inflate(call.head.encoding, data)
            return parse(call.head, data)
        except Exception as exc:
            self._fail(call, INTERNAL, parse_error(flag, exc))
            return None

    async def _unary(self, call: Call, message: Any, compressed: Any = None) -> None:
        handler = call.head.handler
        try:
            if compressed is not None:
                data = await asyncio.to_thread(inflate, call.head.encoding, compressed[5:])
                try:
                    message = parse(call.head, data)
                except Exception as exc:
                    call.finish(INTERNAL, parse_error(1, exc))
                    return
            reply = await handler.unary_unary(message, call)
            if isinstance(reply, codec.WireMessage):
                call.finish(OK, "", self.encode(call, *reply.pieces))
            else:
                call.finish(OK, "", self.encode(call, handler.response_serializer(reply)))
        except NaiadError as exc:
            call.finish(exc.grpc_code, exc.message)
        except asyncio.CancelledError:
            pass  # reset by the client, or past its deadline: answered there
        except Exception as exc:  # the server keeps serving whatever a handler did
            log.error("unhandled error in gRPC %s", call.head.rpc, exc_info=exc)
            call.finish(UNKNOWN, f"Unexpected error in RPC handling: {exc}")

    async def _streaming(self, call: Call) -> None:
        try:
            await call.head.handler.stream_stream(call.requests(), call)
            call.finish(OK)
        except NaiadError as exc:
            call.finish(exc.grpc_code, exc.message)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            log.error("unhandled error in gRPC %s", call.head.rpc, exc_info=exc)
            call.finish(UNKNOWN, f"Unexpected error in RPC handling: {exc}")

    def compresses(self, call: Call) -> bool:
        return bool(self.front.level) and call.head.gzip_ok and call.head.rpc in INFERENCE_RPCS

    def encode(self, call: Call, *pieces: bytes | memoryview) -> tuple[bytes | memoryview, ...]:
        """One message (serialized, in ``pieces``) as DATA: its 5-byte prefix and the (maybe
        gzipped) bytes; large pieces are sent as they are, not copied."""
        flag = b"\x00"
        if self.compresses(call):
            deflate = zlib.compressobj(self.front.level, zlib.DEFLATED, 31)
            data = b"".join(deflate.compress(p) for p in pieces) + deflate.flush()
            pieces = (data,)
            flag = b"\x01"
        size = sum(map(len, pieces)) if len(pieces) > 1 else len(pieces[0])
        prefix = flag + size.to_bytes(4, "big")
        if size < 1 << 16:
            return (prefix + b"".join(pieces),)
        if len(pieces[0]) < 1 << 16:
            return (prefix + pieces[0], *pieces[1:])
        return (prefix, *pieces)

    def _fail(self, call: Call, code: int, message: str) -> None:
        if call.task is not None:
            call.task.cancel()
        call.finish(code, message)

    def _deadline(self, call: Call) -> None:
        call.timer = None
        self._fail(call, DEADLINE_EXCEEDED, "Deadline Exceeded")

    def on_reset(self, stream: Stream) -> None:
        call: Call | None = stream.call
        if call is not None:
            call.buf = bytearray()
            call.placed = None
            self._release(call)
        if call is not None and not call.done:
            call.done = True
            if call.timer is not None:
                call.timer.cancel()
            if call.task is not None:
                call.task.cancel()
        self._closed_stream()

    def on_closed(self, stream: Stream) -> None:
        if stream.call is not None:
            self._release(stream.call)
        self._closed_stream()

    def _closed_stream(self) -> None:
        if not self.streams:
            self.idle_since = self.loop.time()
            if self.goaway_sent:
                self.close()


class LeanEndpoint:
    """The lean gRPC server for one data plane; starts and stops as
    :class:`~naiad.grpc.server.GrpcEndpoint` does."""

    def __init__(
        self,
        dataplane: DataPlane,
        config: GrpcConfig,
        *,
        head_timeout: float = 30.0,
        body_timeout: float = 30.0,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self.config = config
        #: the HTTP front's limits (``--http-header-timeout``, ``--http-body-timeout``)
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.budget = Budget(max_buffered)
        self._period = max(0.05, min(1.0, head_timeout / 4, body_timeout / 4))
        self._sweeper: asyncio.TimerHandle | None = None
        options = service_options(config)
        self.inference = InferenceService(dataplane, options)
        self.health = HealthService(dataplane, options)
        self.methods = method_table(self.inference, self.health)
        self.level = _LEVELS.get(config.infer_response_compression_level, 0)
        self.connections: set[GrpcConnection] = set()
        self._read: memoryview | None = None
        self.draining = False
        self._server: asyncio.AbstractServer | None = None
        self._all_closed: asyncio.Event | None = None

    def read_buffer(self) -> memoryview:
        """The one buffer every connection reads frames into (they are handled, on the loop,
        before the next read)."""
        if self._read is None:
            self._read = memoryview(bytearray(h2.READ_SIZE))
        return self._read

    async def start(self) -> None:
        cfg = self.config
        target = f"{cfg.address}:{cfg.port}"
        loop = asyncio.get_running_loop()
        tls = tls_context(cfg) if cfg.use_ssl else None
        try:
            self._server = await loop.create_server(
                lambda: GrpcProtocol(self),
                cfg.address or None,
                cfg.port,
                reuse_address=True,
                reuse_port=cfg.reuse_port or None,
                ssl=tls,
                ssl_handshake_timeout=self.head_timeout if tls is not None else None,
            )
        except OSError as exc:
            log.error("Socket '%s' already in use (%s)", target, exc)
            raise SystemExit(1) from exc
        self._sweeper = loop.call_later(self._period, self._sweep, loop)
        log.info("Started GRPCInferenceService at %s", target)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for conn in list(self.connections):
            conn.sweep(now)
        self._sweeper = loop.call_later(self._period, self._sweep, loop)

    def closed_one(self) -> None:
        if self._all_closed is not None and not self.connections:
            self._all_closed.set()

    async def stop(self, grace: float) -> None:
        """Stop taking connections and calls (GOAWAY); those in progress (open streams too)
        get ``grace`` seconds, then their connections close."""
        server, self._server = self._server, None
        if server is None:
            return
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        server.close()
        self.draining = True
        self._all_closed = asyncio.Event()
        for conn in list(self.connections):
            conn.drain_and_close()
        if self.connections:
            try:
                await asyncio.wait_for(self._all_closed.wait(), max(grace, 0.0))
            except asyncio.TimeoutError:
                for conn in list(self.connections):
                    if conn.transport is not None:
                        conn.transport.abort()
        await server.wait_closed()
