"""Backends used by the tests through ``--plugin naiad_test_backends``.

They are real third-party-style plugins (registered through the same hook any plugin uses), with
behaviour the framework models cannot give on demand: taking a known time, or raising.
"""

from __future__ import annotations

import itertools
import threading
import time

import naiad
import numpy as np


class SleepBackend(naiad.InferenceBackend):
    """Sleeps ``max(INPUT0)`` milliseconds, then echoes INPUT0 as OUTPUT0.

    Also reports, per batch item, OUTPUT1 = the execution's sequence number across all
    instances of all models (1, 2, ...), and OUTPUT2 = the most executions ever seen running at
    once; tests read ordering and concurrency from them.
    """

    name = "test_sleep"
    _lock = threading.Lock()
    _sequence = itertools.count(1)
    _active = 0
    _peak = 0

    def execute(self, inputs, outputs):
        cls = type(self)
        x = inputs["INPUT0"]
        with cls._lock:
            number = next(cls._sequence)
            cls._active += 1
            cls._peak = max(cls._peak, cls._active)
        try:
            time.sleep(float(x.max()) / 1000.0)
        finally:
            with cls._lock:
                cls._active -= 1
        batch = x.shape[0]
        return {
            "OUTPUT0": x.copy(),
            "OUTPUT1": np.full((batch, 1), number, dtype=np.int32),
            "OUTPUT2": np.full((batch, 1), cls._peak, dtype=np.int32),
        }


class FailBackend(naiad.InferenceBackend):
    """Raises when any INPUT0 element is negative (``SystemExit`` for -999, as a backend that
    calls ``sys.exit()`` would); echoes otherwise."""

    name = "test_fail"

    def execute(self, inputs, outputs):
        x = inputs["INPUT0"]
        if (x == -999).any():
            raise SystemExit(3)
        if (x < 0).any():
            raise RuntimeError("negative input: this backend refuses it")
        return {"OUTPUT0": np.array(x, copy=True)}


@naiad.hookimpl
def naiad_register_backends(registry):
    registry.register(SleepBackend)
    registry.register(FailBackend)
