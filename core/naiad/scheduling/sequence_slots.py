"""The sequence batcher's bookkeeping: requests, slots, instances, live sequences, timers.

Plain objects owned by :class:`naiad.scheduling.sequence.SequenceBatcher` and touched only on
the event loop thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from ..inference import InferRequest
from .instance import Instance


class Entry:
    """One request waiting for (or in) execution."""

    __slots__ = ("request", "future", "arrived", "seq")

    def __init__(
        self, request: InferRequest, future: asyncio.Future, arrived: int, seq: LiveSequence
    ):
        self.request = request
        self.future = future
        self.arrived = arrived
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
