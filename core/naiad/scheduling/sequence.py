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
(``max_sequence_idle_microseconds``) is released by a timer on the loop. Everything here runs on
the event loop thread; only ``Instance.run`` runs on the instance's worker thread. Times are
``time.monotonic_ns()``.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import InternalError, InvalidArgument, NaiadError, Unavailable
from ..inference import InferRequest, InferResponse
from ..signature import Signature
from ..stats import ModelStats
from .base import UNLOADED, SchedulerCore
from .instance import BatchResult, Instance
from .sequence_inputs import SequenceInputs
from .sequence_slots import BatchRule, Entry, LiveSequence, LoopTimer, Runner, Slot

log = logging.getLogger(__name__)

#: how late the idle reaper may run, at most, to batch its checks (ns)
_REAPER_SLACK_NS = 50_000_000


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
        self._dispatch_pending = False
        self._wake = LoopTimer(self._dispatch)
        self._reaper = LoopTimer(self._reap)
        self._expiry = LoopTimer(self._expire_backlog)

    # ---- enqueue -------------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        seq = self._route(request)
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
            seq.deadline = min(seq.deadline, deadline) if seq.deadline else deadline
            self._expiry.arm(seq.deadline)
        if seq.slot is not None and not seq.slot.runner.busy:
            self._kick()  # requests that arrive in this loop iteration join the batch
        # a client that went away: its sequence is cancelled when the entry comes up
        return await self._wait(entry)

    def _route(self, request: InferRequest) -> LiveSequence:
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
            self._take_slot(seq)
        else:
            self._backlog.append(seq)
        return seq

    # ---- slots ---------------------------------------------------------------------------------

    def _take_slot(self, seq: LiveSequence) -> None:
        index, position = heapq.heappop(self._free)
        slot = self._runners[position].slots[index]
        slot.seq = seq
        seq.slot = slot
        seq.deadline = 0
        seq.last_active = time.monotonic_ns()  # idle time counts from getting a slot
        self._held.add(seq)
        self._reaper.arm(seq.last_active + self._idle_ns)

    def _release(self, seq: LiveSequence) -> None:
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
                self._take_slot(waiting)

    def _settle(self, seq: LiveSequence) -> None:
        """A sequence that takes no more requests frees its slot once nothing of it is left."""
        if not seq.open and not seq.queue and seq.slot is not None:
            self._release(seq)

    def _cancel(self, seq: LiveSequence) -> None:
        """A queued request was cancelled by its client: the whole sequence ends (Triton)."""
        seq.open = False
        if self._active.get(seq.id) is seq:
            del self._active[seq.id]
        while seq.queue:
            self._fail(
                seq.queue.popleft(), Unavailable(f"sequence {seq.id} was cancelled"), "CANCELED"
            )
        if not seq.busy:
            self._release(seq)
        self._kick()

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
        now = time.monotonic_ns()
        for runner in self._runners:
            if not runner.busy:
                self._run_next(runner, now)

    def _ready(self, runner: Runner) -> list[Slot]:
        """Slots of ``runner`` whose sequence has a request to run (cancelled heads end their
        sequence here)."""
        ready = []
        for slot in runner.slots:
            seq = slot.seq
            if seq is None or seq.busy or not seq.queue:
                continue
            if seq.queue[0].cancelled:
                self._cancel(seq)
                continue
            ready.append(slot)
        return ready

    def _run_next(self, runner: Runner, now: int) -> None:
        ready = self._ready(runner)
        if not ready:
            return
        rule = self._rule
        picks, wait_until = rule.oldest(ready, now) if self._oldest else rule.direct(ready, now)
        if picks:
            self._execute(runner, picks)
        elif wait_until:
            self._wake.arm(wait_until)

    # ---- execution -----------------------------------------------------------------------------

    def _execute(self, runner: Runner, picks: list[Slot | None]) -> None:
        """Take the head request of every picked slot, add controls and state, and run."""
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
            self._dequeued()
            seq.busy = True
            req = entry.request
            inputs = dict(req.inputs)
            inputs.update(io.controls(req.sequence_start, req.sequence_end, True, seq.id))
            if io.states:
                if req.sequence_start or seq.state is None:
                    seq.state = io.initial_states()
                inputs.update(seq.state)
            request = replace(req, inputs=inputs)
            template = template or request
            taken.append((len(requests), entry))
            requests.append(request)
            if not seq.open and not seq.queue:
                self._release(seq)  # its last request is on its way: the slot is free again
        assert template is not None
        batch = [r if r is not None else self._filler(template) for r in requests]
        runner.busy = True
        loop = asyncio.get_running_loop()

        def done(result: BatchResult | None, error: BaseException | None) -> None:
            runner.busy = False
            self._finish(taken, len(batch), result, error)
            self._run_next(runner, time.monotonic_ns())

        runner.instance.executor.call_soon(loop, done, runner.instance.run, batch, io.state_outputs)

    def _filler(self, template: InferRequest) -> InferRequest:
        """A not-ready batch item shaped like ``template``, so later slots keep their position."""
        inputs = dict(template.inputs)
        inputs.update(self._io.controls(False, False, False, None))
        for state in self._io.states:
            inputs[state.input_name] = np.zeros_like(inputs[state.input_name])
        return replace(template, id="", inputs=inputs, sequence_start=False, sequence_end=False)

    def _finish(
        self,
        taken: list[tuple[int, Entry]],
        batch_size: int,
        result: BatchResult | None,
        error: BaseException | None,
    ) -> None:
        stats = self._stats
        end = time.monotonic_ns()
        if result is None:
            failure = error or InternalError("execution failed")
            result = BatchResult([failure] * batch_size, end, 0, 0, 0)  # type: ignore[list-item]
        if any(not isinstance(result.responses[i], BaseException) for i, _ in taken):
            stats.record_execution(batch_size, result.input_ns, result.infer_ns, result.output_ns)
        n = len(taken)
        for position, e in taken:
            seq = e.seq
            seq.busy = False
            seq.last_active = end
            response = result.responses[position]
            if not isinstance(response, BaseException):
                response = self._keep_state(seq, response)
            self._answer(e, stats.record_outcome(response, e.arrived, end, result, n, 1))
            self._settle(seq)

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

    def _answer(self, e: Entry, result: InferResponse | NaiadError) -> None:
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
        now = time.monotonic_ns()
        idle = self._idle_ns
        next_check = 0
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
                self._release(seq)
                continue
            else:
                due = seq.last_active + idle
            next_check = min(next_check, due) if next_check else due
        if next_check:
            self._reaper.arm(max(next_check, now + min(_REAPER_SLACK_NS, idle // 10)))
        self._kick()  # backlogged sequences may have got the freed slots

    def _expire_backlog(self) -> None:
        """Backlogged sequences whose requests' timeout passed fail with Triton's message."""
        now = time.monotonic_ns()
        next_check = 0
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
                self._fail(
                    seq.queue.popleft(),
                    Unavailable("timeout of the corresponding sequence has been expired"),
                )
        if next_check:
            self._expiry.arm(next_check)

    # ---- shutdown ------------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """New sequences are refused at once; requests of live ones are still taken until
        everything queued has run or ``timeout`` passed; what is left then fails."""
        await self._close_and_wait(timeout)
        error = Unavailable(UNLOADED)
        for seq in [*(s.seq for r in self._runners for s in r.slots if s.seq), *self._backlog]:
            while seq.queue:
                self._fail(seq.queue.popleft(), error)
        for timer in (self._wake, self._reaper, self._expiry):
            timer.cancel()
