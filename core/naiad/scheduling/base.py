"""The interface every scheduler implements, and the bookkeeping they all share.

Every scheduler (default, dynamic batcher, sequence batcher, ensemble) accepts requests while it
is open, counts them in flight until they are answered, keeps Triton's *pending* count (accepted,
not yet executing), notices clients that went away, and on unload waits for what it accepted
before failing what is left. :class:`SchedulerCore` does that once; the schedulers only decide
what runs when.

Threads: a :class:`Ticket`'s future is touched only on the event loop. The one field instance
threads read is :attr:`Ticket.cancelled`, a plain flag the loop sets when the client leaves.
"""

from __future__ import annotations

import abc
import asyncio
import time

from ..errors import Unavailable
from ..inference import InferRequest, InferResponse
from ..stats import ModelStats

#: the answer to requests still queued when an unload's drain timeout ran out
UNLOADED = "model was unloaded before the request ran"


class Scheduler(abc.ABC):
    """Takes validated requests for one model version and returns their responses."""

    @abc.abstractmethod
    async def infer(self, request: InferRequest) -> InferResponse:
        """Run one request; raise a :class:`naiad.NaiadError` on failure."""

    @abc.abstractmethod
    async def drain(self, timeout: float) -> None:
        """Stop taking requests, wait (up to ``timeout`` s) for queued/in-flight ones to finish,
        then fail any that remain with a clear error."""

    @property
    @abc.abstractmethod
    def inflight(self) -> int:
        """Requests accepted and not yet answered."""


class Ticket:
    """One accepted request: its future (loop only), when it arrived, whether its client left."""

    __slots__ = ("request", "future", "arrived", "cancelled")

    def __init__(self, request: InferRequest, future: asyncio.Future, arrived: int) -> None:
        self.request = request
        self.future = future
        #: ``time.monotonic_ns()`` at acceptance
        self.arrived = arrived
        #: set on the loop when the client went away; instance threads skip such tickets
        self.cancelled = False


class SchedulerCore(Scheduler):
    """In-flight and pending counts, admission, cancellation and drain, for every scheduler.

    A request's life through the core: :meth:`_admit` (in flight, pending) → the scheduler
    queues it → :meth:`_dequeued` when it starts executing or leaves the queue without running
    → :meth:`_finished` once it is answered (or dropped). :meth:`_wait` awaits the answer and
    records a client that left. All of it runs on the event loop.
    """

    def __init__(self, stats: ModelStats) -> None:
        self._stats = stats
        self._inflight = 0
        self._closed = False
        self._drained = asyncio.Event()
        self._drained.set()

    @property
    def inflight(self) -> int:
        return self._inflight

    def _refuse_if_closed(self, request: InferRequest) -> None:
        if self._closed:
            raise Unavailable(f"model '{request.model_name}' is unloading")

    def _admit(
        self, request: InferRequest, loop: asyncio.AbstractEventLoop | None = None
    ) -> Ticket:
        """Count a new request in flight and pending; its ticket, with a fresh future (of
        ``loop``, the running loop, when the caller has it at hand)."""
        self._count_in()
        if loop is None:
            loop = asyncio.get_running_loop()
        return Ticket(request, loop.create_future(), time.monotonic_ns())

    def _count_in(self) -> None:
        """One more request in flight and pending (:meth:`_admit` without a ticket)."""
        self._inflight += 1
        self._stats.pending += 1
        self._drained.clear()

    async def _wait(self, ticket: Ticket) -> InferResponse:
        """The ticket's answer; a client that leaves marks it cancelled (Triton: CANCELED)."""
        try:
            return await ticket.future
        except asyncio.CancelledError:
            ticket.cancelled = True
            self._stats.record_failure(time.monotonic_ns() - ticket.arrived, "CANCELED")
            raise

    def _dequeued(self, count: int = 1) -> None:
        """``count`` requests left the queue: they execute now, or never (Triton's pending)."""
        self._stats.pending -= count

    def _finished(self, count: int = 1) -> None:
        """``count`` requests were answered or dropped: no longer in flight."""
        self._inflight -= count
        if self._inflight == 0:
            self._drained.set()

    @staticmethod
    def _resolve(ticket: Ticket, outcome: InferResponse | BaseException) -> None:
        """Resolve the ticket's future (if its client still waits) with ``outcome``."""
        if ticket.future.done():
            return
        if isinstance(outcome, BaseException):
            ticket.future.set_exception(outcome)
        else:
            ticket.future.set_result(outcome)

    async def _close_and_wait(self, timeout: float) -> None:
        """Refuse new requests; wait up to ``timeout`` s for every accepted one to be answered."""
        self._closed = True
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except asyncio.TimeoutError:
            pass
