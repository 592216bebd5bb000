"""Backends used by the tests through ``--plugin naiad_test_backends``.

They are real third-party-style plugins (registered through the same hook any plugin uses), with
behaviour the framework models cannot give on demand: taking a known time, or raising.
"""

from __future__ import annotations

import time

import naiad
import numpy as np


class SleepBackend(naiad.InferenceBackend):
    """Sleeps ``INPUT0[0]`` milliseconds, then echoes INPUT0 as OUTPUT0."""

    name = "test_sleep"

    def execute(self, inputs, outputs):
        x = inputs["INPUT0"]
        time.sleep(float(x.reshape(-1)[0]) / 1000.0)
        return {"OUTPUT0": x.copy()}


class FailBackend(naiad.InferenceBackend):
    """Raises when any INPUT0 element is negative; echoes otherwise."""

    name = "test_fail"

    def execute(self, inputs, outputs):
        x = inputs["INPUT0"]
        if (x < 0).any():
            raise RuntimeError("negative input: this backend refuses it")
        return {"OUTPUT0": np.array(x, copy=True)}


@naiad.hookimpl
def naiad_register_backends(registry):
    registry.register(SleepBackend)
    registry.register(FailBackend)
