"""Triton's dynamic batcher: requests queued per priority level, merged into batches.

Batch formation follows Triton's ``DynamicBatchScheduler::GetDynamicBatch``
(see ``shared/reference/scheduling.md`` §3): scan the oldest requests, never split one, stop at
``max_batch_size`` or at a request whose variable-size shapes differ; prefer the longest prefix
that equals a preferred batch size; otherwise send when the batch cannot grow, reached the
largest preferred size, or the oldest request waited ``max_queue_delay_microseconds``.

Futures, timers and statistics live on the event loop thread. The queues are shared with the
instance threads under one lock: an instance that finishes a batch forms the next one from the
queue itself and runs it at once, then tells the loop about the finished one, so a busy model
never waits for a round trip through the event loop (two thread wake-ups, ~90 µs on a small VM)
between executions. All times are ``time.monotonic_ns()``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from ..errors import InternalError, NaiadError, Unavailable
from ..inference import InferRequest, InferResponse
from ..signature import Signature
from ..stats import ModelStats
from .base import UNLOADED, SchedulerCore, Ticket
from .instance import BatchResult, Instance
from .worker import log_failure

log = logging.getLogger(__name__)

#: a queued entry taken out under the lock, for the loop to settle: (entry, None) when its
#: client went away, (entry, error) when it timed out
_Dropped = list[tuple["_Entry", "NaiadError | None"]]


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """One priority level's ``ModelQueuePolicy``."""

    max_queue_size: int = 0
    default_timeout_us: int = 0
    allow_timeout_override: bool = False
    delay_on_timeout: bool = False  # timeout_action DELAY (else REJECT)

    @classmethod
    def from_proto(cls, p) -> QueuePolicy:
        return cls(
            p.max_queue_size,
            p.default_timeout_microseconds,
            p.allow_timeout_override,
            p.timeout_action == type(p).DELAY,
        )

    def timeout_us(self, requested: int | None) -> int:
        """Triton's ``PolicyQueue::Enqueue``: a request's own timeout applies only when allowed,
        non-zero, and not longer than a non-zero default."""
        t = requested or 0
        if (
            not self.allow_timeout_override
            or t == 0
            or (self.default_timeout_us != 0 and t > self.default_timeout_us)
        ):
            return self.default_timeout_us
        return t


class _Entry(Ticket):
    __slots__ = ("deadline", "level", "order", "result")

    def __init__(
        self,
        request: InferRequest,
        future: asyncio.Future,
        arrived: int,
        deadline: int,
        level: int,
    ) -> None:
        # Ticket.__init__, written out: one call fewer for every request
        self.request = request
        self.future = future
        self.arrived = arrived
        self.cancelled = False
        #: monotonic ns after which the queued request times out (0 = never)
        self.deadline = deadline
        self.level = level
        self.order = 0
        self.result: InferResponse | BaseException | None = None


class _Level:
    """One priority level: its policy, its FIFO, and requests moved back by DELAY timeouts."""

    __slots__ = ("policy", "queue", "delayed")

    def __init__(self, policy: QueuePolicy) -> None:
        self.policy = policy
        self.queue: deque[_Entry] = deque()
        self.delayed: deque[_Entry] = deque()

    def __len__(self) -> int:
        return len(self.queue) + len(self.delayed)


class DynamicBatcher(SchedulerCore):
    """Batches requests for a pool of instances; each instance runs one batch at a time."""

    def __init__(
        self,
        instances: list[Instance],
        stats: ModelStats,
        signature: Signature,
        dynamic_batching,
    ) -> None:
        db = dynamic_batching
        super().__init__(stats)
        self._idle: list[Instance] = list(instances)
        self._sig = signature
        self._max_batch = max(signature.max_batch_size, 1)
        preferred = sorted(set(db.preferred_batch_size)) or [self._max_batch]
        self._preferred = frozenset(preferred)
        self._max_preferred = max(preferred)
        self._delay_ns = db.max_queue_delay_microseconds * 1000
        self._preserve_ordering = db.preserve_ordering
        default_policy = QueuePolicy.from_proto(db.default_queue_policy)
        levels = max(db.priority_levels, 1)
        self._levels = [
            _Level(
                QueuePolicy.from_proto(db.priority_queue_policy[i])
                if i in db.priority_queue_policy
                else default_policy
            )
            for i in range(1, levels + 1)
        ]
        self._default_level = (db.default_priority_level or 1) - 1
        #: names of inputs whose shapes must match to share a batch (variable dims, not ragged)
        self._shape_checked = [
            s.name for s in signature.inputs.values() if -1 in s.dims and not s.optional
        ]
        self._has_optional = any(s.optional for s in signature.inputs.values())
        #: guards what the instance threads share: the levels' queues, _queued and _idle
        self._lock = threading.Lock()
        self._queued = 0
        self._dispatch_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0
        self._order = 0
        self._release: deque[_Entry] = deque()  # preserve_ordering: entries not yet answered

    # ---- enqueue -------------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        self._refuse_if_closed(request)
        p = request.priority
        level_index = p - 1 if 0 < p <= len(self._levels) else self._default_level
        level = self._levels[level_index]
        policy = level.policy
        if policy.max_queue_size and len(level) >= policy.max_queue_size:
            self._stats.record_failure(0, "REJECTED")
            raise Unavailable(
                f"Exceeds maximum queue size for model '{request.model_name}' "
                f"(max_queue_size {policy.max_queue_size} at priority level {level_index + 1})"
            )
        loop = asyncio.get_running_loop()
        self._count_in()  # SchedulerCore._admit, with the entry made at once
        arrived = time.monotonic_ns()
        timeout_us = policy.timeout_us(request.timeout_us)
        deadline = arrived + timeout_us * 1000 if timeout_us else 0
        entry = _Entry(request, loop.create_future(), arrived, deadline, level_index)
        if self._preserve_ordering:
            entry.order = self._order
            self._order += 1
            self._release.append(entry)
        with self._lock:
            level.queue.append(entry)
            self._queued += 1
        if entry.deadline:
            self._arm_timer(entry.deadline, loop)
        if self._idle and not self._dispatch_pending:
            # let requests that arrive in this loop iteration join the batch
            self._dispatch_pending = True
            loop.call_soon(self._dispatch_soon)
        # a client that went away: if still queued, the entry is skipped and dropped
        # (SchedulerCore._wait, written out: one coroutine fewer per request)
        try:
            return await entry.future
        except asyncio.CancelledError:
            entry.cancelled = True
            self._stats.record_failure(time.monotonic_ns() - entry.arrived, "CANCELED")
            raise

    # ---- batch formation -----------------------------------------------------------------------

    def _dispatch_soon(self) -> None:
        self._dispatch_pending = False
        self._dispatch()

    def _dispatch(self) -> None:
        """Send batches while an instance is idle and a batch is ready (on the loop)."""
        loop = asyncio.get_running_loop()
        while True:
            dropped: _Dropped = []
            with self._lock:
                if not (self._idle and self._queued):
                    return
                batch, wait_until = self._next_batch(time.monotonic_ns(), dropped)
                instance = self._idle.pop() if batch else None
            self._settle_dropped(dropped)
            if instance is not None:
                self._dequeued(len(batch))
                requests = [e.request for e in batch]
                if not instance.submit(requests, self._submitted(instance, batch)):
                    instance.executor.call_soon(
                        None, log_failure, self._chain, loop, instance, batch
                    )
                continue
            if wait_until:
                self._arm_timer(wait_until, loop)
            return

    def _next_batch(self, now: int, dropped: _Dropped) -> tuple[list[_Entry], int]:
        """Under the lock: the batch to run now, taken out of the queues (or [] and when to
        look again)."""
        batch, wait_until = self._form_batch(now, dropped)
        for e in batch:
            level = self._levels[e.level]
            queue = level.queue
            if queue and queue[0] is e:  # a batch is most often the queue's head, in order
                queue.popleft()
                continue
            try:
                queue.remove(e)
            except ValueError:
                level.delayed.remove(e)
        self._queued -= len(batch)
        return batch, wait_until

    def _candidates(self, now: int, dropped: _Dropped):
        """Under the lock: queued entries in scan order: level 1 first; per level, live ones
        then delayed ones. Cancelled entries and expired REJECT ones leave the queues first,
        wherever they are (into ``dropped``, for the loop to settle); expired DELAY entries move
        to the level's delayed queue."""
        for level in self._levels:
            self._expire(level, now, dropped)
            for e in list(level.queue):
                yield level, level.queue, e
            for e in list(level.delayed):
                yield level, level.delayed, e

    def _expire(self, level: _Level, now: int, dropped: _Dropped) -> None:
        """Under the lock: take cancelled and timed-out entries out of ``level``'s queues."""
        q = level.queue
        if any(e.cancelled or (e.deadline and e.deadline <= now) for e in q):
            kept: list[_Entry] = []
            for e in q:
                if e.cancelled:  # by its client
                    self._queued -= 1
                    dropped.append((e, None))
                elif e.deadline and e.deadline <= now:
                    if level.policy.delay_on_timeout:
                        e.deadline = 0
                        level.delayed.append(e)
                    else:
                        self._queued -= 1
                        dropped.append((e, Unavailable("Request timeout expired")))
                else:
                    kept.append(e)
            q.clear()
            q.extend(kept)
        if any(e.cancelled for e in level.delayed):
            kept = []
            for e in level.delayed:
                if e.cancelled:
                    self._queued -= 1
                    dropped.append((e, None))
                else:
                    kept.append(e)
            level.delayed.clear()
            level.delayed.extend(kept)

    def _form_batch(self, now: int, dropped: _Dropped) -> tuple[list[_Entry], int]:
        """Under the lock: (batch to send now, or [] and the monotonic ns to re-check at,
        0 = on arrival)."""
        batch: list[_Entry] = []
        total = 0
        best = -1  # length of the prefix to send early
        cannot_grow = False
        first = None
        for _level, _q, e in self._candidates(now, dropped):
            if e.cancelled:  # since _expire looked
                continue
            size = e.request.batch_size
            if total + size > self._max_batch:
                cannot_grow = True
                break
            if first is None:
                first = e.request
            elif not self._compatible(first, e.request):
                cannot_grow = True
                break
            if total + size > self._max_preferred and best < 0:
                best = len(batch)
            batch.append(e)
            total += size
            if total in self._preferred:
                best = len(batch)
        if not batch:
            return [], 0
        oldest = min(e.arrived for e in batch)
        waited = now - oldest
        delay = self._delay_ns
        delay_passed = delay > 0 and waited >= delay
        if best > 0 and not delay_passed:
            return batch[:best], 0
        if cannot_grow or total >= self._max_preferred or delay == 0 or delay_passed:
            return batch, 0
        return [], oldest + delay

    def _compatible(self, a: InferRequest, b: InferRequest) -> bool:
        if self._has_optional and a.inputs.keys() != b.inputs.keys():
            return False
        for name in self._shape_checked:
            if a.inputs[name].shape[1:] != b.inputs[name].shape[1:]:
                return False
        return True

    def _arm_timer(self, at_ns: int, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None and self._timer_at <= at_ns:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at_ns
        delay = max(at_ns - time.monotonic_ns(), 0) / 1e9
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = 0
        now = time.monotonic_ns()
        dropped: _Dropped = []
        with self._lock:
            # expire queued requests even when no instance is free
            for _ in self._candidates(now, dropped):
                pass
        self._settle_dropped(dropped)
        self._dispatch()
        with self._lock:
            nearest = min(
                (e.deadline for lv in self._levels for e in lv.queue if e.deadline > now),
                default=0,
            )
        if nearest:
            self._arm_timer(nearest, asyncio.get_running_loop())

    # ---- execution -----------------------------------------------------------------------------

    def _chain(self, loop: asyncio.AbstractEventLoop, instance: Instance, batch: list[_Entry]):
        """On the instance's thread: run ``batch``, then each batch ready behind it."""
        while True:
            try:
                result: BatchResult | None = instance.run([e.request for e in batch])
                error: BaseException | None = None
            except BaseException as exc:  # e.g. SystemExit from a backend: fail this batch only
                result, error = None, exc
            dropped: _Dropped = []
            following: list[_Entry] = []
            with self._lock:
                try:
                    if self._queued:
                        following, _ = self._next_batch(time.monotonic_ns(), dropped)
                except Exception:  # a bug; the batch that ran is still answered below
                    log.exception("forming the next batch failed")
                    following = []
                if not following:
                    # the instance is free only when its execution has really ended
                    self._idle.append(instance)
            try:
                loop.call_soon_threadsafe(self._ran, batch, result, error, following, dropped)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return
            if not following:
                return
            batch = following

    def _submitted(self, instance: Instance, batch: list[_Entry]):
        """The callback of a batch started from the loop (:meth:`Instance.submit`)."""

        def done(result: BatchResult | None, error: BaseException | None) -> None:
            with self._lock:
                self._idle.append(instance)
            self._finish(batch, result, error)
            if self._queued:
                self._dispatch()

        return done

    def _ran(
        self,
        batch: list[_Entry],
        result: BatchResult | None,
        error: BaseException | None,
        following: list[_Entry],
        dropped: _Dropped,
    ) -> None:
        """On the loop: ``batch`` ran; ``following`` started after it on the same instance."""
        self._settle_dropped(dropped)
        self._dequeued(len(following))
        self._finish(batch, result, error)
        if not following and self._queued:
            self._dispatch()  # another idle instance, or a batch that waits for its delay

    def _finish(
        self, batch: list[_Entry], result: BatchResult | None, error: BaseException | None
    ) -> None:
        stats = self._stats
        end = time.monotonic_ns()
        if result is None:
            result = BatchResult(
                [error or InternalError("execution failed")] * len(batch), end, 0, 0, 0
            )
        total = sum(e.request.batch_size for e in batch)
        ok = [not isinstance(r, BaseException) for r in result.responses]
        if any(ok):
            stats.record_execution(total, result.input_ns, result.infer_ns, result.output_ns)
        n = len(batch)
        for e, response in zip(batch, result.responses, strict=True):
            e.result = stats.record_outcome(
                response, e.arrived, end, result, n, e.request.batch_size
            )
            if not self._preserve_ordering:
                self._answer(e)
        if self._preserve_ordering:
            self._release_ready()

    def _release_ready(self) -> None:
        """preserve_ordering: answer, in arrival order, every entry whose result is in."""
        while self._release and self._release[0].result is not None:
            self._answer(self._release.popleft())

    def _answer(self, e: _Entry) -> None:
        self._finished()
        assert e.result is not None
        self._resolve(e, e.result)

    def _settle_dropped(self, dropped: _Dropped) -> None:
        """On the loop: answer entries that left the queue without running."""
        self._dequeued(len(dropped))
        for e, error in dropped:
            if error is None:  # its client went away: nobody to answer
                e.result = asyncio.CancelledError()
                if not self._preserve_ordering:
                    self._finished()
            else:
                self._stats.record_failure(time.monotonic_ns() - e.arrived, "REJECTED")
                e.result = error
                if not self._preserve_ordering:
                    self._answer(e)
        if dropped and self._preserve_ordering:
            self._release_ready()

    # ---- shutdown ------------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        await self._close_and_wait(timeout)
        # whatever is still queued now will never run: fail it clearly
        error = Unavailable(UNLOADED)
        with self._lock:
            left = [e for level in self._levels for q in (level.queue, level.delayed) for e in q]
            for level in self._levels:
                level.queue.clear()
                level.delayed.clear()
            self._queued -= len(left)
        self._settle_dropped([(e, error) for e in left])
