"""The default scheduler: each request runs alone on the next free instance."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

from ..errors import InternalError, Unavailable
from ..inference import InferRequest, InferResponse
from ..stats import ModelStats
from .base import UNLOADED, SchedulerCore, Ticket
from .instance import BatchResult, Instance
from .worker import log_failure

#: executions submitted from the loop one instance may hold at once (running and waiting in
#: its process), while no instance is idle
SUBMIT_DEPTH = 8


class DefaultScheduler(SchedulerCore):
    """Strict FIFO over a pool of instances; a model with N instances runs at most N requests
    at once.

    An instance that takes executions from the loop (:meth:`Instance.submit`: a
    process-isolated one) gets them so and answers on the loop, with no instance thread; while
    every instance is busy, each of those takes more, up to :data:`SUBMIT_DEPTH` in all, which
    wait in its process (the process runs them one after the other, and never idles waiting
    for the loop's turn; the loop reads several answers per wake-up).

    When an instance finishes, its own thread takes the oldest queued request and runs it at
    once, then tells the event loop about the finished one: no newcomer can overtake a waiting
    request (``asyncio.Queue`` lets one, which sends the woken waiter to the back of the line),
    and a busy instance never waits for a round trip through the event loop (two thread
    wake-ups, ~90 µs on a small VM) between executions. The queue and the idle list are shared
    with the instance threads under ``_lock``; futures and statistics stay on the loop.
    """

    def __init__(self, instances: list[Instance], stats: ModelStats) -> None:
        if not instances:
            raise ValueError("a scheduler needs at least one instance")
        super().__init__(stats)
        #: idle instances, longest idle first: sequential requests rotate over the instances
        self._idle: deque[Instance] = deque(instances)
        #: instances running executions submitted from the loop that take one more (loop
        #: only): it waits in the instance's process, so that never idles between two
        self._second: deque[Instance] = deque()
        #: executions submitted from the loop per instance, in flight (loop only)
        self._submitted_to: dict[Instance, int] = {}
        self._queue: deque[Ticket] = deque()
        self._lock = threading.Lock()

    async def infer(self, request: InferRequest) -> InferResponse:
        self._refuse_if_closed(request)
        loop = asyncio.get_running_loop()
        entry = self._admit(request, loop)
        with self._lock:
            # nothing waits and an instance is idle: it takes this one now (what _pump would
            # do, without the queue)
            instance = self._idle.popleft() if self._idle and not self._queue else None
            if instance is None:
                self._queue.append(entry)
        if instance is None:
            self._pump(loop)
        else:
            self._dequeued()
            self._start(loop, instance, entry)
        # a client that leaves: still queued, it is skipped when its turn comes; running, it
        # finishes unseen (SchedulerCore._wait, written out: one coroutine fewer per request)
        try:
            return await entry.future
        except asyncio.CancelledError:
            entry.cancelled = True
            self._stats.record_failure(time.monotonic_ns() - entry.arrived, "CANCELED")
            raise

    def _start(self, loop: asyncio.AbstractEventLoop, instance: Instance, entry: Ticket) -> None:
        """Run ``entry`` on ``instance``, which was idle: from the loop where it can, else on
        its thread (which then takes what is queued behind it)."""
        if instance.submits and instance.submit(
            [entry.request], self._submitted(loop, instance, entry, False)
        ):
            self._submitted_to[instance] = 1
            if SUBMIT_DEPTH > 1:
                self._second.append(instance)
            return
        instance.executor.call_soon(None, log_failure, self._chain, loop, instance, entry)

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start queued requests on idle instances, oldest first (then, while none is idle,
        queue one more behind each instance that runs an execution submitted from the loop)."""
        while True:
            with self._lock:
                if not self._queue:
                    return
                if self._idle:
                    instance, second = self._idle.popleft(), False
                elif self._second:
                    instance, second = self._second.popleft(), True
                else:
                    return
                entry = self._queue.popleft()
                if entry.cancelled:  # its client went away while it was queued
                    (self._second if second else self._idle).appendleft(instance)
            self._dequeued()
            if entry.cancelled:
                self._finished()
                continue
            if not second:
                self._start(loop, instance, entry)
                continue
            if instance.submit([entry.request], self._submitted(loop, instance, entry, second)):
                # the loop talks to the instance itself (a process-isolated one)
                held = self._submitted_to[instance] = self._submitted_to[instance] + 1
                if held < SUBMIT_DEPTH:
                    self._second.append(instance)
                continue
            # not from the loop now: back to the head of the line
            with self._lock:
                self._queue.appendleft(entry)
            self._stats.pending += 1
            self._second.appendleft(instance)
            return

    def _submitted(
        self, loop: asyncio.AbstractEventLoop, instance: Instance, entry: Ticket, second: bool
    ):
        """The callback of an execution submitted from the loop: answer it, free the
        instance's slot, start what waits."""

        def done(result: BatchResult | None, error: BaseException | None) -> None:
            self._complete(entry, result, error)
            held = self._submitted_to[instance] - 1
            if not held:  # it ran this one alone: idle now
                del self._submitted_to[instance]
                if instance in self._second:
                    self._second.remove(instance)
                with self._lock:
                    self._idle.append(instance)
            else:  # others it took still run
                self._submitted_to[instance] = held
                if instance not in self._second:
                    self._second.append(instance)
            self._pump(loop)

        return done

    def _chain(self, loop: asyncio.AbstractEventLoop, instance: Instance, entry: Ticket) -> None:
        """On the instance's thread: run ``entry``, then whatever is queued behind it."""
        while True:
            try:
                result: BatchResult | None = instance.run([entry.request])
                error: BaseException | None = None
            except BaseException as exc:  # e.g. SystemExit from a backend: fail this one only
                result, error = None, exc
            skipped: list[Ticket] = []
            with self._lock:
                following = None
                while self._queue:
                    candidate = self._queue.popleft()
                    if candidate.cancelled:  # its client went away while it was queued
                        skipped.append(candidate)
                        continue
                    following = candidate
                    break
                if following is None:
                    # the instance is free only when its execution has really ended
                    self._idle.append(instance)
            try:
                loop.call_soon_threadsafe(self._ran, entry, result, error, following, skipped)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return
            if following is None:
                return
            entry = following

    def _ran(
        self,
        entry: Ticket,
        result: BatchResult | None,
        error: BaseException | None,
        following: Ticket | None,
        skipped: list[Ticket],
    ) -> None:
        """On the loop: ``entry`` ran; ``following`` started after it; ``skipped`` were dropped."""
        if skipped or following is not None:
            self._dequeued(len(skipped) + (following is not None))
            if skipped:
                self._finished(len(skipped))
        self._complete(entry, result, error)

    def _complete(
        self, entry: Ticket, result: BatchResult | None, error: BaseException | None
    ) -> None:
        end = time.monotonic_ns()
        if result is None:
            result = BatchResult([error or InternalError("execution failed")], end, 0, 0, 0)
        request = entry.request
        outcome = self._stats.record_alone(
            result.responses[0], entry.arrived, end, result, request.batch_size
        )
        future = entry.future  # SchedulerCore._resolve, written out
        if not future.done():
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        self._finished()

    async def drain(self, timeout: float) -> None:
        await self._close_and_wait(timeout)
        # whatever is still queued now will never run: fail it clearly
        with self._lock:
            left = list(self._queue)
            self._queue.clear()
        self._dequeued(len(left))
        for entry in left:
            self._resolve(entry, Unavailable(UNLOADED))
        self._finished(len(left))
