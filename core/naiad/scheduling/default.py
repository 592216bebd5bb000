"""The default scheduler: each request runs alone on the next free instance."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from ..errors import InternalError, Unavailable
from ..inference import InferRequest, InferResponse
from ..stats import ModelStats
from .base import Scheduler
from .instance import BatchResult, Instance


class _Pending:
    __slots__ = ("request", "future", "arrived")

    def __init__(self, request: InferRequest, future: asyncio.Future, arrived: int) -> None:
        self.request = request
        self.future = future
        self.arrived = arrived


class DefaultScheduler(Scheduler):
    """Strict FIFO over a pool of instances; a model with N instances runs at most N requests
    at once.

    When an instance finishes, the oldest queued request is handed to it from the completion
    callback itself: no newcomer can overtake a waiting request (``asyncio.Queue`` lets one,
    which sends the woken waiter to the back of the line), and the instance never waits for
    the event loop to schedule a coroutine before its next execution.
    """

    def __init__(self, instances: list[Instance], stats: ModelStats) -> None:
        if not instances:
            raise ValueError("a scheduler needs at least one instance")
        #: idle instances, longest idle first: sequential requests rotate over the instances
        self._idle: deque[Instance] = deque(instances)
        self._queue: deque[_Pending] = deque()
        self._stats = stats
        self._inflight = 0
        self._closed = False
        self._done = asyncio.Event()
        self._done.set()

    @property
    def inflight(self) -> int:
        return self._inflight

    async def infer(self, request: InferRequest) -> InferResponse:
        if self._closed:
            raise Unavailable(f"model '{request.model_name}' is unloading")
        loop = asyncio.get_running_loop()
        arrived = time.monotonic_ns()
        entry = _Pending(request, loop.create_future(), arrived)
        self._queue.append(entry)
        self._inflight += 1
        self._stats.pending += 1
        self._done.clear()
        self._pump(loop)
        try:
            return await entry.future
        except asyncio.CancelledError:
            # still queued: it is skipped when its turn comes; running: it finishes unseen
            self._stats.record_failure(time.monotonic_ns() - arrived, "CANCELED")
            raise

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start queued requests on idle instances, oldest first."""
        while self._idle and self._queue:
            entry = self._queue.popleft()
            self._stats.pending -= 1  # Triton's pending count: requests not yet executing
            if entry.future.done():  # its client went away while it was queued
                self._finished()
                continue
            instance = self._idle.popleft()
            self._start(loop, instance, entry)

    def _start(self, loop: asyncio.AbstractEventLoop, instance: Instance, entry: _Pending) -> None:
        def done(result: BatchResult | None, error: BaseException | None) -> None:
            # the instance is free only when its execution has really ended
            self._idle.append(instance)
            self._complete(entry, result, error)
            self._pump(loop)

        instance.executor.call_soon(loop, done, instance.run, [entry.request])

    def _complete(
        self, entry: _Pending, result: BatchResult | None, error: BaseException | None
    ) -> None:
        stats = self._stats
        request = entry.request
        end = time.monotonic_ns()
        if result is None:
            result = BatchResult([error or InternalError("execution failed")], end, 0, 0, 0)
        elif not isinstance(result.responses[0], BaseException):
            stats.record_execution(
                request.batch_size, result.input_ns, result.infer_ns, result.output_ns
            )
        outcome = stats.record_outcome(
            result.responses[0], entry.arrived, end, result, 1, request.batch_size
        )
        if not entry.future.done():
            if isinstance(outcome, BaseException):
                entry.future.set_exception(outcome)
            else:
                entry.future.set_result(outcome)
        self._finished()

    def _finished(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._done.set()

    async def drain(self, timeout: float) -> None:
        self._closed = True
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        # whatever is still queued now will never run: fail it clearly
        while self._queue:
            entry = self._queue.popleft()
            self._stats.pending -= 1
            if not entry.future.done():
                entry.future.set_exception(Unavailable("model was unloaded before the request ran"))
            self._finished()
