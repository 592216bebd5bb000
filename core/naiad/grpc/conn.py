"""The life of one connection of the lean gRPC front: keepalive pings and their limits,
Triton's ping policy, connection age, and what :mod:`.limits` bounds (idle connections,
stalled request messages, the front's message budget). :class:`naiad.grpc.front.GrpcProtocol`
adds the calls."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .calls import Call
from .h2 import H2Protocol
from .h2frames import CANCEL, CONNECTION_WINDOW, ENHANCE_YOUR_CALM, PING, frame
from .limits import IDLE_TIMEOUT, SMALL_BODY

if TYPE_CHECKING:
    from .front import LeanEndpoint


class GrpcConnection(H2Protocol):
    """One gRPC client connection's life: its timers (keepalive, age), Triton's ping policy and
    the limits of :mod:`.limits` (idle, body progress, the front's budget)."""

    def __init__(self, front: LeanEndpoint) -> None:
        super().__init__()
        self.front = front
        self._last_ping = float("-inf")  # the first ping is never a strike (as grpc)
        self._strikes = 0
        self._timers: list[asyncio.TimerHandle] = []
        self._ping_due: asyncio.TimerHandle | None = None
        #: keepalive pings sent since the server last sent headers or data, and ``sends`` then
        self._pings_without_data = 0
        self._sends_at_ping = -1
        #: message bytes this connection reserved from the front's budget, and waits for
        self.reserved = 0
        self.wanted = 0
        self.opened_one = False
        self.idle_since = self.loop.time()

    # ---- connection ------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        front = self.front
        front.connections.add(self)
        cfg = front.config
        if cfg.keepalive_time_ms > 0:
            self._timers.append(self.loop.call_later(cfg.keepalive_time_ms / 1e3, self._keepalive))
        if cfg.max_connection_age_ms > 0:
            self._timers.append(
                self.loop.call_later(cfg.max_connection_age_ms / 1e3, self._too_old)
            )
        if front.draining:
            self.drain_and_close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.discard(self)
        self.front.budget.forget(self)
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

    def sweep(self, now: float) -> None:
        """The front's periodic check (see :mod:`.limits`): a connection that never began a
        call or went idle is closed, a stream whose request stopped arriving mid-message
        is reset."""
        front = self.front
        if not self.opened_one:
            if now - self.idle_since > front.head_timeout:
                if self.handshaken:
                    self.drain_and_close()
                else:
                    self.close()
            return
        if not self.streams:
            if now - self.idle_since > IDLE_TIMEOUT:
                self.drain_and_close()
            return
        if self.wanted or self.held > CONNECTION_WINDOW // 2:
            return  # naiad holds the client back, not the other way round
        for stream in list(self.streams.values()):
            call: Call | None = stream.call
            if call is None or call.done or stream.held or stream.remote_closed:
                continue
            receiving = call.queue is None or bool(call.buf)
            if receiving and now - call.last > front.body_timeout:
                self.reset(stream, CANCEL)
                self.drain_and_close()  # the client's other calls may end; no new ones

    def read_buffer(self) -> memoryview:
        return self.front.read_buffer()

    def is_open(self) -> bool:
        return self.transport is not None

    def granted(self) -> None:
        """The budget this connection waited for is reserved: read on."""
        now = self.loop.time()
        for stream in self.streams.values():
            if stream.call is not None:
                stream.call.last = now
        if self.transport is not None:
            self.transport.resume_reading()

    def _reserve(self, call: Call, length: int) -> bool:
        """A message of ``length`` bytes began on ``call``: large ones reserve their size.
        True when this call reserved it now and got it."""
        if length > SMALL_BODY and not call.reserved:
            call.reserved = length
            if self.front.budget.reserve(self, length):
                return True
            if self.transport is not None:
                self.transport.pause_reading()
        return False

    def _release(self, call: Call) -> None:
        if call.reserved:
            self.front.budget.release(self, call.reserved)
            call.reserved = 0

    def _too_old(self) -> None:
        self.drain_and_close()
        grace = self.front.config.max_connection_age_grace_ms
        self._timers.append(self.loop.call_later(max(grace, 0) / 1e3, self.close))

    def _keepalive(self) -> None:
        """A keepalive ping while calls are open (or always if permitted); no more than
        ``--grpc-http2-max-pings-without-data`` of them without headers or data sent in between
        (0: no limit), as grpc's ``GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA`` says."""
        cfg = self.front.config
        if self.sends != self._sends_at_ping:
            self._pings_without_data = 0
        most = cfg.http2_max_pings_without_data
        allowed = not most or self._pings_without_data < most
        if (
            allowed
            and self._ping_due is None
            and (self.streams or cfg.keepalive_permit_without_calls)
        ):
            self._pings_without_data += 1
            self._sends_at_ping = self.sends
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
