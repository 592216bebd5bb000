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

from ..dataplane import DataPlane
from ..errors import NaiadError
from . import health_service_pb2_grpc, service_pb2_grpc
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
from .h2 import H2Protocol
from .h2frames import ENHANCE_YOUR_CALM, PING, Stream, encode_headers, frame
from .options import INFERENCE_RPCS, service_options
from .service import HealthService, InferenceService

log = logging.getLogger(__name__)

_LEVELS = {"low": 1, "medium": 6, "high": 9}
#: seconds a new connection has to send its preface and SETTINGS
HANDSHAKE_TIMEOUT = 20.0


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


class GrpcProtocol(H2Protocol):
    """One gRPC client connection."""

    def __init__(self, front: LeanEndpoint) -> None:
        super().__init__()
        self.front = front
        self._last_ping = 0.0
        self._strikes = 0
        self._timers: list[asyncio.TimerHandle] = []
        self._ping_due: asyncio.TimerHandle | None = None

    # ---- connection ------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        front = self.front
        front.connections.add(self)
        cfg = front.config
        if cfg.keepalive_time_ms > 0:
            self._timers.append(self.loop.call_later(cfg.keepalive_time_ms / 1e3, self._keepalive))
        self._timers.append(self.loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_check))
        if cfg.max_connection_age_ms > 0:
            self._timers.append(
                self.loop.call_later(cfg.max_connection_age_ms / 1e3, self._too_old)
            )
        if front.draining:
            self.drain_and_close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.discard(self)
        for timer in self._timers:
            timer.cancel()
        if self._ping_due is not None:
            self._ping_due.cancel()
        super().connection_lost(exc)
        self.front.closed_one()

    def drain_and_close(self) -> None:
        """GOAWAY: the calls begun are answered, then the connection closes."""
        if not self.goaway_sent:
            self.goaway()
        if not self.streams:
            self.close()

    def _handshake_check(self) -> None:
        """A client that has not sent its preface and SETTINGS by now is not a gRPC client."""
        if not self.handshaken:
            self.close()

    def _too_old(self) -> None:
        self.drain_and_close()
        grace = self.front.config.max_connection_age_grace_ms
        self._timers.append(self.loop.call_later(max(grace, 0) / 1e3, self.close))

    def _keepalive(self) -> None:
        cfg = self.front.config
        if self.streams or cfg.keepalive_permit_without_calls:
            self.write(frame(PING, 0, 0, b"naiad-ka"))
            self._ping_due = self.loop.call_later(cfg.keepalive_timeout_ms / 1e3, self.close)
        self._timers.append(self.loop.call_later(cfg.keepalive_time_ms / 1e3, self._keepalive))

    def on_ping_ack(self, payload: bytes) -> None:
        if self._ping_due is not None:
            self._ping_due.cancel()
            self._ping_due = None

    def on_ping(self) -> bool:
        """Triton's ping policy: pings closer than the minimum interval while the server sent
        nothing are strikes; too many end the connection (GOAWAY ENHANCE_YOUR_CALM)."""
        cfg = self.front.config
        now = self.loop.time()
        if not self.sent_since_ping:
            idle = not self.streams and not cfg.keepalive_permit_without_calls
            least = 7200.0 if idle else cfg.http2_min_recv_ping_interval_without_data_ms / 1e3
            if now - self._last_ping < least:
                self._strikes += 1
                if cfg.http2_max_ping_strikes and self._strikes > cfg.http2_max_ping_strikes:
                    self.goaway(ENHANCE_YOUR_CALM, b"too_many_pings")
                    self.close()
                    return False
        else:
            self._strikes = 0
        self._last_ping = now
        self.sent_since_ping = False
        return True

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
        if head.refusal is not None:
            self.send(stream, None, (), head.refusal)
            return
        call = stream.call = Call(self, stream, head)
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
        buf = call.buf
        buf += data
        if call.queue is not None:
            while len(buf) >= 5:
                length = int.from_bytes(buf[1:5], "big")
                if length > INT32_MAX:
                    self._fail(call, RESOURCE_EXHAUSTED, "Received message larger than max")
                    return
                if len(buf) < 5 + length:
                    break
                message = self._message(call, buf[0], bytes(buf[5 : 5 + length]))
                del buf[: 5 + length]
                if message is None:
                    return
                call.queue.put_nowait(message)
            if end:
                if buf:
                    self._fail(call, INTERNAL, "Incomplete message at the end of the stream")
                    return
                call.queue.put_nowait(END)
            return
        if len(buf) > INT32_MAX + 5 or int.from_bytes(buf[1:5], "big") > INT32_MAX:
            self._fail(call, RESOURCE_EXHAUSTED, "Received message larger than max")
        elif end:
            self._unary_ready(call)

    def _unary_ready(self, call: Call) -> None:
        buf = call.buf
        length = int.from_bytes(buf[1:5], "big") if len(buf) >= 5 else -1
        if length != len(buf) - 5:
            self._fail(call, INTERNAL, "Expected one request message")
            return
        flag = buf[0]
        call.buf = bytearray()
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
            return call.head.handler.request_deserializer(data)
        except Exception as exc:
            self._fail(call, INTERNAL, parse_error(flag, exc))
            return None

    async def _unary(self, call: Call, message: Any, compressed: bytearray | None = None) -> None:
        handler = call.head.handler
        try:
            if compressed is not None:
                data = await asyncio.to_thread(inflate, call.head.encoding, compressed[5:])
                try:
                    message = handler.request_deserializer(data)
                except Exception as exc:
                    call.finish(INTERNAL, parse_error(1, exc))
                    return
            reply = await handler.unary_unary(message, call)
            data = handler.response_serializer(reply)
            call.finish(OK, "", self.encode(call, data))
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

    def encode(self, call: Call, data: bytes) -> tuple[bytes, ...]:
        """One message as DATA: its 5-byte prefix and the (maybe gzipped) bytes."""
        flag = b"\x00"
        if self.compresses(call):
            deflate = zlib.compressobj(self.front.level, zlib.DEFLATED, 31)
            data = deflate.compress(data) + deflate.flush()
            flag = b"\x01"
        prefix = flag + len(data).to_bytes(4, "big")
        if len(data) < 1 << 16:
            return (prefix + data,)
        return (prefix, data)

    def _fail(self, call: Call, code: int, message: str) -> None:
        if call.task is not None:
            call.task.cancel()
        call.finish(code, message)

    def _deadline(self, call: Call) -> None:
        call.timer = None
        self._fail(call, DEADLINE_EXCEEDED, "Deadline Exceeded")

    def on_reset(self, stream: Stream) -> None:
        call: Call | None = stream.call
        if call is not None and not call.done:
            call.done = True
            if call.timer is not None:
                call.timer.cancel()
            if call.task is not None:
                call.task.cancel()
        self._closed_stream()

    def on_closed(self, stream: Stream) -> None:
        self._closed_stream()

    def _closed_stream(self) -> None:
        if self.goaway_sent and not self.streams:
            self.close()


class LeanEndpoint:
    """The lean gRPC server for one data plane; starts and stops as
    :class:`~naiad.grpc.server.GrpcEndpoint` does."""

    def __init__(self, dataplane: DataPlane, config: GrpcConfig) -> None:
        self.config = config
        options = service_options(config)
        self.inference = InferenceService(dataplane, options)
        self.health = HealthService(dataplane, options)
        self.methods = method_table(self.inference, self.health)
        self.level = _LEVELS.get(config.infer_response_compression_level, 0)
        self.connections: set[GrpcProtocol] = set()
        self.draining = False
        self._server: asyncio.AbstractServer | None = None
        self._all_closed: asyncio.Event | None = None

    async def start(self) -> None:
        cfg = self.config
        target = f"{cfg.address}:{cfg.port}"
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: GrpcProtocol(self),
                cfg.address or None,
                cfg.port,
                reuse_address=True,
                reuse_port=cfg.reuse_port or None,
            )
        except OSError as exc:
            log.error("Socket '%s' already in use (%s)", target, exc)
            raise SystemExit(1) from exc
        log.info("Started GRPCInferenceService at %s", target)

    def closed_one(self) -> None:
        if self._all_closed is not None and not self.connections:
            self._all_closed.set()

    async def stop(self, grace: float) -> None:
        """Stop taking connections and calls (GOAWAY); those in progress (open streams too)
        get ``grace`` seconds, then their connections close."""
        server, self._server = self._server, None
        if server is None:
            return
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
