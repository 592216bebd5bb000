"""The sequence batcher's bookkeeping (requests, slots, instances, live sequences, timers) and
its batch formation rules.

Plain objects owned by :class:`naiad.scheduling.sequence.SequenceBatcher` and touched only on
the event loop thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import NaiadError
from ..inference import InferRequest
from .base import Ticket
from .instance import Instance


class Entry(Ticket):
    """One request waiting for (or in) execution, and the sequence it belongs to."""

    __slots__ = ("seq",)

    def __init__(self, ticket: Ticket, seq: LiveSequence) -> None:
        super().__init__(ticket.request, ticket.future, ticket.arrived)
        self.seq = seq


class Slot:
    """One batch position of one instance; holds at most one sequence."""

    __slots__ = ("runner", "index", "seq")

    def __init__(self, runner: Runner, index: int) -> None:
        self.runner = runner
        self.index = index
        self.seq: LiveSequence | None = None


class Runner:
    """One instance, its slots, and whether it is executing a batch."""

    __slots__ = ("instance", "position", "slots", "busy")

    def __init__(self, instance: Instance, position: int, slot_count: int) -> None:
        self.instance = instance
        self.position = position
        self.slots = [Slot(self, i) for i in range(slot_count)]
        self.busy = False


class LiveSequence:
    """One live sequence: its queued requests, its slot (None while backlogged), its state."""

    __slots__ = ("id", "queue", "slot", "busy", "state", "last_active", "deadline", "open")

    def __init__(self, corrid: int | str, now: int) -> None:
        self.id = corrid
        self.queue: deque[Entry] = deque()
        self.slot: Slot | None = None
        #: one of its requests is executing
        self.busy = False
        #: implicit state input name -> the tensor its last request produced
        self.state: dict[str, np.ndarray] | None = None
        #: monotonic ns of its last request arrival or answer (for the idle reaper)
        self.last_active = now
        #: monotonic ns after which it is dropped from the backlog (0 = never)
        self.deadline = 0
        #: later requests may join (False after END was queued, or once reaped or cancelled)
        self.open = True


class Effects:
    """What a section of the sequence batcher under its lock leaves for the loop to do
    (futures, statistics and timers are touched only on the loop)."""

    __slots__ = ("dequeued", "failed", "reaper_at", "wake_at", "kick")

    def __init__(self) -> None:
        #: requests taken out of their queues to execute (Triton's pending count)
        self.dequeued = 0
        #: requests that leave without running: (entry, error, failure reason)
        self.failed: list[tuple[Entry, NaiadError, str]] = []
        #: monotonic ns to arm the idle reaper / the batch-delay timer at (0 = no change)
        self.reaper_at = 0
        self.wake_at = 0
        #: slots changed hands: dispatch again
        self.kick = False

    @staticmethod
    def _sooner(a: int, b: int) -> int:
        return min(a, b) if a and b else a or b

    def arm_reaper(self, at: int) -> None:
        self.reaper_at = self._sooner(self.reaper_at, at)

    def arm_wake(self, at: int) -> None:
        self.wake_at = self._sooner(self.wake_at, at)


class LoopTimer:
    """A loop timer that is re-armed only to fire earlier than already planned."""

    __slots__ = ("_callback", "_handle", "_at")

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0

    def arm(self, at_ns: int) -> None:
        if self._handle is not None and self._at <= at_ns:
            return
        self.cancel()
        self._at = at_ns
        delay = max(at_ns - time.monotonic_ns(), 0) / 1e9
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._at = 0
        self._callback()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._at = 0


def _head(slot: Slot) -> Entry:
    assert slot.seq is not None
    return slot.seq.queue[0]


@dataclass(frozen=True, slots=True)
class BatchRule:
    """When and how ready slots become a batch (``shared/reference/scheduling.md`` §4.3-4.4).

    Every method takes the slots of one instance whose sequence has a request ready, and returns
    ``(picks, wait_until)``: the batch (None marks a filler position), or ``[]`` and the
    monotonic ns at which to look again (0: when something changes).
    """

    max_batch: int
    preferred: frozenset[int]
    max_preferred: int
    delay_ns: int
    min_utilization: float
    #: inputs whose shapes must match to share a batch (variable dims)
    shape_checked: tuple[str, ...]
    has_optional: bool

    def direct(self, ready: list[Slot], now: int) -> tuple[list[Slot | None], int]:
        """Positions 0..highest ready slot; a slot with nothing compatible ready is a filler.
        With a delay and a minimum utilisation, wait for enough ready slots."""
        if self.delay_ns and self.min_utilization > 0:
            oldest = min(_head(s).arrived for s in ready)
            full_enough = len(ready) / self.max_batch >= self.min_utilization
            if now - oldest <= self.delay_ns and not full_enough:
                return [], oldest + self.delay_ns + 1
        first = _head(ready[0]).request
        picks: list[Slot | None] = [None] * (ready[-1].index + 1)
        for slot in ready:
            if slot is ready[0] or self.compatible(first, _head(slot).request):
                picks[slot.index] = slot
        return picks, 0

    def oldest(self, ready: list[Slot], now: int) -> tuple[list[Slot | None], int]:
        """The dynamic batcher's rule over the oldest ready requests, one per sequence."""
        ready.sort(key=lambda s: _head(s).arrived)
        batch: list[Slot | None] = []
        best = -1
        cannot_grow = False
        first = _head(ready[0]).request
        for slot in ready:
            if len(batch) + 1 > self.max_batch or (
                batch and not self.compatible(first, _head(slot).request)
            ):
                cannot_grow = True
                break
            batch.append(slot)
            if len(batch) in self.preferred:
                best = len(batch)
        oldest = _head(ready[0]).arrived
        delay = self.delay_ns
        delay_passed = delay > 0 and now - oldest >= delay
        if best > 0 and not delay_passed:
            return batch[:best], 0
        if cannot_grow or len(batch) >= self.max_preferred or delay == 0 or delay_passed:
            return batch, 0
        return [], oldest + delay

    def compatible(self, a: InferRequest, b: InferRequest) -> bool:
        if self.has_optional and a.inputs.keys() != b.inputs.keys():
            return False
        return all(a.inputs[n].shape == b.inputs[n].shape for n in self.shape_checked)
