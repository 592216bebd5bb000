"""Triton's sequence batcher: stateful models, one slot per live sequence.

Every request carries a correlation id (``sequence_id``); all requests of one sequence go to the
same slot of the same instance, in arrival order, one at a time. Sequences that find no free slot
wait in a FIFO backlog. Each execution is a batch made of the next request of several sequences
(``shared/reference/scheduling.md`` §4):

- **Direct** (default): ``max(max_batch_size, 1)`` slots per instance; a sequence keeps its batch
  position. A batch holds positions ``0..p`` where ``p`` is the highest slot with a request
  ready; empty positions below carry a filler (a copy of a real request with READY false, state
  zeros) whose outputs are discarded. ``max_queue_delay_microseconds`` with
  ``minimum_slot_utilization`` may hold a batch back for more slots to become ready.
- **Oldest**: ``max_candidate_sequences`` slots per instance; batches are formed like the dynamic
  batcher's from the oldest ready requests, at most one per sequence, honouring
  ``preferred_batch_size`` and ``max_queue_delay_microseconds``.

Control tensors and implicit state come from :class:`SequenceInputs`. An idle sequence
(``max_sequence_idle_microseconds``) is released by a timer on the loop.

Threads: the slots, sequences and their queues are shared with the instance threads under
``_lock``. An instance that finishes a batch keeps its sequences' state, frees what ended and
forms its next batch itself, then runs it at once, as the default scheduler and the dynamic
batcher do: a busy model never waits for a round trip through the event loop between
executions. What must happen on the loop (futures, statistics, timers) is collected in an
``Effects`` under the lock and applied there. Times are ``time.monotonic_ns()``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import logging
import operator
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

from ..errors import InternalError, InvalidArgument, NaiadError, Unavailable
from ..inference import InferRequest, InferResponse
from ..signature import Signature
from ..stats import ModelStats
from .base import UNLOADED, SchedulerCore
from .instance import BatchResult, Instance
from .sequence_inputs import SequenceInputs
from .sequence_slots import BatchRule, Effects, Entry, LiveSequence, LoopTimer, Runner, Slot
from .worker import log_failure

log = logging.getLogger(__name__)

#: how late the idle reaper may run, at most, to batch its checks (ns)
_REAPER_SLACK_NS = 50_000_000

#: one formed batch: what the instance runs, and (batch position, entry) of the real requests
_Batch = tuple[list[InferRequest], list[tuple[int, Entry]]]

#: an InferRequest's fields, in its constructor's order (read in one call), and their places
_FIELDS = tuple(f.name for f in dataclasses.fields(InferRequest))
_READ_FIELDS = operator.attrgetter(*_FIELDS)
_PLACE = {name: i for i, name in enumerate(_FIELDS)}


def _with(request: InferRequest, **changes) -> InferRequest:
    """``dataclasses.replace(request, **changes)`` at a fraction of its cost (it looks the
    fields up anew on each call; this runs for every batch item)."""
    values = list(_READ_FIELDS(request))
    for name, value in changes.items():
        values[_PLACE[name]] = value
    return InferRequest(*values)


class SequenceBatcher(SchedulerCore):
    """Routes each sequence to one slot of one instance and batches sequences together."""

    def __init__(
        self,
        instances: list[Instance],
        stats: ModelStats,
        signature: Signature,
        config,
        model_path: Path | None = None,
    ) -> None:
        if not instances:
            raise ValueError("a scheduler needs at least one instance")
        sb = config.sequence_batching
        super().__init__(stats)
        self._sig = signature
        self._io = SequenceInputs(config, model_path)
        max_batch = max(config.max_batch_size, 1)
        self._oldest = sb.HasField("oldest")
        if self._oldest:
            slots = sb.oldest.max_candidate_sequences or max_batch
            preferred = set(sb.oldest.preferred_batch_size) or {max_batch}
            delay_us, utilization = sb.oldest.max_queue_delay_microseconds, 0.0
        else:
            slots, preferred = max_batch, set()
            delay_us = sb.direct.max_queue_delay_microseconds
            utilization = sb.direct.minimum_slot_utilization
        self._rule = BatchRule(
            max_batch,
            frozenset(preferred),
            max(preferred, default=max_batch),
            delay_us * 1000,
            utilization,
            tuple(s.name for s in signature.inputs.values() if -1 in s.dims and not s.optional),
            any(s.optional for s in signature.inputs.values()),
        )
        self._idle_ns = (sb.max_sequence_idle_microseconds or 1_000_000) * 1000
        self._runners = [Runner(inst, i, slots) for i, inst in enumerate(instances)]
        #: free slots as (slot index, instance position): slot 0 of every instance first
        self._free = [(s, r) for s in range(slots) for r in range(len(instances))]
        heapq.heapify(self._free)
        #: correlation id -> the sequence that requests with that id join
        self._active: dict[int | str, LiveSequence] = {}
        #: sequences that hold a slot and may go idle
        self._held: set[LiveSequence] = set()
        self._backlog: deque[LiveSequence] = deque()
        #: guards the slots, the sequences and their queues (shared with the instance threads)
        self._lock = threading.Lock()
        self._dispatch_pending = False
        self._wake = LoopTimer(self._dispatch)
        self._reaper = LoopTimer(self._reap)
        self._expiry = LoopTimer(self._expire_backlog)

    # ---- enqueue -------------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        fx = Effects()
        deadline = 0
        with self._lock:
            seq = self._route(request, fx)
            entry = Entry(self._admit(request), seq)
            now = entry.arrived
            seq.queue.append(entry)
            seq.last_active = now
            if request.sequence_end:
                seq.open = False
                if self._active.get(seq.id) is seq:
                    del self._active[seq.id]
            if seq.slot is None and request.timeout_us:
                deadline = now + request.timeout_us * 1000
                seq.deadline = deadline = min(seq.deadline, deadline) if seq.deadline else deadline
            # requests that arrive in this loop iteration join the batch
            fx.kick = fx.kick or (seq.slot is not None and not seq.slot.runner.busy)
        if deadline:
            self._expiry.arm(deadline)
        self._apply(fx)
        # a client that went away: its sequence is cancelled when the entry comes up
        return await self._wait(entry)

    def _route(self, request: InferRequest, fx: Effects) -> LiveSequence:
        """Check the request (Triton's rules and messages), then find or start its sequence."""
        model = request.model_name
        if request.batch_size != 1:
            raise InvalidArgument(
                f"inference request to model '{model}' must specify batch-size 1 due to "
                "requirements of sequence batcher"
            )
        corrid = request.sequence_id
        if corrid == 0 or corrid == "":
            raise InvalidArgument(
                f"inference request to model '{model}' must specify a non-zero or non-empty "
                "correlation ID"
            )
        self._io.check_id(request)
        seq = self._active.get(corrid)
        if seq is None and not request.sequence_start:
            raise InvalidArgument(
                f"inference request for sequence {corrid} to model '{model}' must specify the "
                "START flag on the first request of the sequence"
            )
        if request.sequence_start and self._closed:
            raise Unavailable(
                "Server is stopping, scheduler for model has stopped accepting new inference "
                "requests"
            )
        if seq is not None:
            if request.sequence_start:
                log.warning(
                    "sequence %s for model '%s' has a conflict. The previous sequence did not "
                    "end before this sequence start. Previous sequence will be terminated early.",
                    corrid,
                    model,
                )
            return seq
        seq = self._active[corrid] = LiveSequence(corrid, time.monotonic_ns())
        if self._free:
            self._take_slot(seq, fx)
        else:
            self._backlog.append(seq)
        return seq

    # ---- slots (under the lock) ----------------------------------------------------------------

    def _take_slot(self, seq: LiveSequence, fx: Effects) -> None:
        index, position = heapq.heappop(self._free)
        slot = self._runners[position].slots[index]
        slot.seq = seq
        seq.slot = slot
        seq.deadline = 0
        seq.last_active = time.monotonic_ns()  # idle time counts from getting a slot
        self._held.add(seq)
        fx.arm_reaper(seq.last_active + self._idle_ns)

    def _release(self, seq: LiveSequence, fx: Effects) -> None:
        """Free ``seq``'s slot, then hand it to the oldest backlogged sequence."""
        slot = seq.slot
        if slot is None:
            return
        seq.slot = None
        slot.seq = None
        self._held.discard(seq)
        heapq.heappush(self._free, (slot.index, slot.runner.position))
        while self._backlog and self._free:
            waiting = self._backlog.popleft()
            if waiting.queue or waiting.open:
                self._take_slot(waiting, fx)

    def _settle(self, seq: LiveSequence, fx: Effects) -> None:
        """A sequence that takes no more requests frees its slot once nothing of it is left."""
        if not seq.open and not seq.queue and seq.slot is not None:
            self._release(seq, fx)

    def _cancel(self, seq: LiveSequence, fx: Effects) -> None:
        """A queued request was cancelled by its client: the whole sequence ends (Triton)."""
        seq.open = False
        if self._active.get(seq.id) is seq:
            del self._active[seq.id]
        error = Unavailable(f"sequence {seq.id} was cancelled")
        while seq.queue:
            fx.failed.append((seq.queue.popleft(), error, "CANCELED"))
        if not seq.busy:
            self._release(seq, fx)
        fx.kick = True

    # ---- batch formation -----------------------------------------------------------------------

    def _kick(self) -> None:
        """Dispatch once this loop iteration ends (slots may have changed hands)."""
        if not self._dispatch_pending:
            self._dispatch_pending = True
            asyncio.get_running_loop().call_soon(self._dispatch_soon)

    def _dispatch_soon(self) -> None:
        self._dispatch_pending = False
        self._dispatch()

    def _dispatch(self) -> None:
        """On the loop: start a batch on every idle instance that has one ready."""
        loop = asyncio.get_running_loop()
        fx = Effects()
        started: list[tuple[Runner, _Batch]] = []
        with self._lock:
            now = time.monotonic_ns()
            for runner in self._runners:
                if not runner.busy:
                    batch = self._next_batch(runner, now, fx)
                    if batch is not None:
                        started.append((runner, batch))
        self._apply(fx)
        for runner, batch in started:
            runner.instance.executor.call_soon(None, log_failure, self._chain, loop, runner, batch)

    def _apply(self, fx: Effects) -> None:
        """On the loop: what a section under the lock left to do."""
        if fx.dequeued:
            self._dequeued(fx.dequeued)
        for entry, error, reason in fx.failed:
            self._fail(entry, error, reason)
        if fx.reaper_at:
            self._reaper.arm(fx.reaper_at)
        if fx.wake_at:
            self._wake.arm(fx.wake_at)
        if fx.kick:
            self._kick()

    def _ready(self, runner: Runner, fx: Effects) -> list[Slot]:
        """Slots of ``runner`` whose sequence has a request to run (cancelled heads end their
        sequence here)."""
        ready = []
        for slot in runner.slots:
            seq = slot.seq
            if seq is None or seq.busy or not seq.queue:
                continue
            if seq.queue[0].cancelled:
                self._cancel(seq, fx)
                continue
            ready.append(slot)
        return ready

    def _next_batch(self, runner: Runner, now: int, fx: Effects) -> _Batch | None:
        """Under the lock: the batch ``runner`` runs next (it is then busy), or None."""
        ready = self._ready(runner, fx)
        if not ready:
            return None
        rule = self._rule
        picks, wait_until = rule.oldest(ready, now) if self._oldest else rule.direct(ready, now)
        if picks:
            runner.busy = True
            return self._take(picks, fx)
        if wait_until:
            fx.arm_wake(wait_until)
        return None

    # ---- execution -----------------------------------------------------------------------------

    def _take(self, picks: list[Slot | None], fx: Effects) -> _Batch:
        """Under the lock: take the head request of every picked slot, add controls and state."""
        io = self._io
        requests: list[InferRequest | None] = []
        taken: list[tuple[int, Entry]] = []
        template: InferRequest | None = None
        for slot in picks:
            if slot is None:
                requests.append(None)
                continue
            seq = slot.seq
            assert seq is not None
            entry = seq.queue.popleft()
            fx.dequeued += 1
            seq.busy = True
            req = entry.request
            inputs = dict(req.inputs)
            inputs.update(io.controls(req.sequence_start, req.sequence_end, True, seq.id))
            if io.states:
                if req.sequence_start or seq.state is None:
                    seq.state = io.initial_states()
                inputs.update(seq.state)
            request = _with(req, inputs=inputs)
            template = template or request
            taken.append((len(requests), entry))
            requests.append(request)
            if not seq.open and not seq.queue:
                self._release(seq, fx)  # its last request is on its way: the slot is free again
        assert template is not None
        return [r if r is not None else self._filler(template) for r in requests], taken

    def _chain(self, loop: asyncio.AbstractEventLoop, runner: Runner, batch: _Batch) -> None:
        """On the instance's thread: run ``batch``, then each batch ready behind it."""
        instance = runner.instance
        while True:
            requests, taken = batch
            try:
                result: BatchResult | None = instance.run(requests, self._io.state_outputs)
                error: BaseException | None = None
            except BaseException as exc:  # e.g. SystemExit from a backend: fail this batch only
                result, error = None, exc
            end = time.monotonic_ns()
            fx = Effects()
            following: _Batch | None = None
            with self._lock:
                answers = self._conclude(taken, len(requests), result, error, end, fx)
                try:
                    following = self._next_batch(runner, time.monotonic_ns(), fx)
                except Exception:  # a bug; the batch that ran is still answered below
                    log.exception("forming the next sequence batch failed")
                if following is None:
                    # the instance is free only when its execution has really ended
                    runner.busy = False
            try:
                loop.call_soon_threadsafe(self._ran, len(requests), result, answers, end, fx)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return
            if following is None:
                return
            batch = following

    def _filler(self, template: InferRequest) -> InferRequest:
        """A not-ready batch item shaped like ``template``, so later slots keep their position."""
        inputs = dict(template.inputs)
        inputs.update(self._io.controls(False, False, False, None))
        for state in self._io.states:
            inputs[state.input_name] = np.zeros_like(inputs[state.input_name])
        return _with(template, id="", inputs=inputs, sequence_start=False, sequence_end=False)

    def _conclude(
        self,
        taken: list[tuple[int, Entry]],
        batch_size: int,
        result: BatchResult | None,
        error: BaseException | None,
        end: int,
        fx: Effects,
    ) -> list[tuple[Entry, InferResponse | BaseException]]:
        """Under the lock: a batch ran. Keep each sequence's state, free what ended; the
        entries and their responses, for the loop to answer."""
        if result is None:
            failure = error or InternalError("execution failed")
            responses: list[InferResponse | BaseException] = [failure] * batch_size
        else:
            responses = list(result.responses)
        answers: list[tuple[Entry, InferResponse | BaseException]] = []
        for position, e in taken:
            seq = e.seq
            seq.busy = False
            seq.last_active = end
            response = responses[position]
            if not isinstance(response, BaseException):
                response = self._keep_state(seq, response)
            answers.append((e, response))
            self._settle(seq, fx)
        return answers

    def _ran(
        self,
        batch_size: int,
        result: BatchResult | None,
        answers: list[tuple[Entry, InferResponse | BaseException]],
        end: int,
        fx: Effects,
    ) -> None:
        """On the loop: a batch ran (and perhaps the next one started): statistics, answers."""
        stats = self._stats
        if result is None:
            result = BatchResult([], end, 0, 0, 0)
        if any(not isinstance(r, BaseException) for _, r in answers):
            stats.record_execution(batch_size, result.input_ns, result.infer_ns, result.output_ns)
        n = len(answers)
        for e, response in answers:
            self._answer(e, stats.record_outcome(response, e.arrived, end, result, n, 1))
        self._apply(fx)

    def _keep_state(
        self, seq: LiveSequence, response: InferResponse
    ) -> InferResponse | InternalError:
        """Move the state outputs out of the response into the sequence (a copy: the batch's
        output array may be reused by the backend); a missing one fails the request."""
        if not self._io.states:
            return response
        outputs = response.outputs
        missing = [s.output_name for s in self._io.states if s.output_name not in outputs]
        if missing:
            return InternalError(
                f"model '{self._sig.model_name}' did not produce state output '{missing[0]}'"
            )
        seq.state = {
            s.input_name: np.array(outputs.pop(s.output_name), copy=True) for s in self._io.states
        }
        return response

    # ---- answers -------------------------------------------------------------------------------

    def _answer(self, e: Entry, result: InferResponse | BaseException) -> None:
        self._finished()
        self._resolve(e, result)

    def _fail(self, e: Entry, error: NaiadError, reason: str = "REJECTED") -> None:
        """Answer a request that leaves a queue without running."""
        self._dequeued()
        if not e.cancelled:  # a cancelled one was counted when its client left
            self._stats.record_failure(time.monotonic_ns() - e.arrived, reason)
        self._answer(e, error)

    # ---- timers: idle sequences and backlog timeouts ------------------------------------------

    def _reap(self) -> None:
        """Release sequences idle longer than ``max_sequence_idle_microseconds``: no inference
        is run and the model gets no END (Triton). A later request of such a sequence needs
        START."""
        fx = Effects()
        next_check = 0
        with self._lock:
            now = time.monotonic_ns()
            idle = self._idle_ns
            for seq in list(self._held):
                if seq.busy or seq.queue:
                    due = now + idle  # never reaped while it has work
                elif now - seq.last_active >= idle:
                    log.debug(
                        "sequence %s of model '%s' was idle: its slot is released",
                        seq.id,
                        self._sig.model_name,
                    )
                    seq.open = False
                    if self._active.get(seq.id) is seq:
                        del self._active[seq.id]
                    self._release(seq, fx)
                    continue
                else:
                    due = seq.last_active + idle
                next_check = min(next_check, due) if next_check else due
        if next_check:
            self._reaper.arm(max(next_check, now + min(_REAPER_SLACK_NS, idle // 10)))
        fx.kick = True  # backlogged sequences may have got the freed slots
        self._apply(fx)

    def _expire_backlog(self) -> None:
        """Backlogged sequences whose requests' timeout passed fail with Triton's message."""
        fx = Effects()
        next_check = 0
        error = Unavailable("timeout of the corresponding sequence has been expired")
        with self._lock:
            now = time.monotonic_ns()
            for seq in list(self._backlog):
                if not seq.deadline:
                    continue
                if seq.deadline > now:
                    next_check = min(next_check, seq.deadline) if next_check else seq.deadline
                    continue
                self._backlog.remove(seq)
                seq.open = False
                if self._active.get(seq.id) is seq:
                    del self._active[seq.id]
                while seq.queue:
                    fx.failed.append((seq.queue.popleft(), error, "REJECTED"))
        if next_check:
            self._expiry.arm(next_check)
        self._apply(fx)

    # ---- shutdown ------------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """New sequences are refused at once; requests of live ones are still taken until
        everything queued has run or ``timeout`` passed; what is left then fails."""
        await self._close_and_wait(timeout)
        fx = Effects()
        error = Unavailable(UNLOADED)
        with self._lock:
            live = [s.seq for r in self._runners for s in r.slots if s.seq]
            for seq in [*live, *self._backlog]:
                while seq.queue:
                    fx.failed.append((seq.queue.popleft(), error, "REJECTED"))
        self._apply(fx)
        for timer in (self._wake, self._reaper, self._expiry):
            timer.cancel()
