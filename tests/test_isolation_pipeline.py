"""Several executions in flight to one instance process: the default scheduler hands a
process-isolated instance up to ``SUBMIT_DEPTH`` executions from the loop while none is idle
(they wait in the child's socket and run one after the other). Every one gets its own answer,
in order; a crash with several in flight fails all of them with the crash's error answer,
and the restarted child serves the next ones. A real instance process, driven from an event
loop through the scheduler as the server drives it (no HTTP: the test needs to know that
every request was handed to the child before the first one ends)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonpy_models as tm
from naiad.backend import InstanceContext
from naiad.config import parse_model_config
from naiad.errors import InternalError
from naiad.inference import InferRequest
from naiad.isolation import make_backend
from naiad.python_backend import PythonFileBackend
from naiad.scheduling.default import SUBMIT_DEPTH, DefaultScheduler
from naiad.scheduling.instance import Instance
from naiad.signature import Signature
from naiad.stats import ModelStats

#: a negative first value waits for the gate file; -2 then kills the process
GATED = """
import os
import time

import triton_python_backend_utils as pb_utils

GATE = {gate!r}


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            if x[0] < 0:
                while not os.path.exists(GATE):
                    time.sleep(0.005)
                if x[0] == -2:
                    os._exit(3)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", x * 2),
                pb_utils.Tensor("PID", np.array([os.getpid()], np.int64))]))
        return responses
""".replace("import time\n", "import time\n\nimport numpy as np\n")

GATED_CONFIG = """
name: "gated"
backend: "python"
input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "PID" data_type: TYPE_INT64 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""


@pytest.fixture
def gated(tmp_path):
    gate = tmp_path / "gate"
    folder = tm.write(tmp_path / "repo", "gated", GATED.format(gate=str(gate)), GATED_CONFIG)
    config = parse_model_config((folder / "config.pbtxt").read_text(), model_name="gated")
    ctx = InstanceContext("gated_0_0", "KIND_CPU")
    backend = make_backend(PythonFileBackend, "process", config, folder, folder / "1", ctx)
    instance = Instance(backend, Signature.from_config(config))
    instance.load()
    try:
        yield instance, gate
    finally:
        instance.release()


def _request(value: float, size: int = 3) -> InferRequest:
    return InferRequest("gated", 1, "", {"IN": np.full(size, value, np.float32)})


async def _in_flight(scheduler: DefaultScheduler, requests: list[InferRequest]) -> list:
    """Start every request, then return their tasks once each went as far as it goes on this
    turn of the loop (handed to the child, or queued)."""
    tasks = [asyncio.ensure_future(scheduler.infer(r)) for r in requests]
    await asyncio.sleep(0)
    return tasks


def test_several_executions_in_flight_each_get_their_answer_in_order(gated):
    instance, gate = gated
    count = SUBMIT_DEPTH + 3  # more than one child takes at once: the rest queue

    async def run() -> tuple[list, int, int]:
        scheduler = DefaultScheduler([instance], ModelStats())
        # a first one holds the child; the next ones of different sizes wait behind it
        tasks = await _in_flight(
            scheduler, [_request(-1)] + [_request(i, i + 1) for i in range(count)]
        )
        in_child = scheduler._submitted_to[instance]
        queued = scheduler._stats.pending
        gate.touch()
        return await asyncio.gather(*tasks), in_child, queued

    answers, in_child, queued = asyncio.run(run())
    assert SUBMIT_DEPTH > 2  # several wait in the child's socket, not one
    assert in_child == SUBMIT_DEPTH
    assert queued == count + 1 - SUBMIT_DEPTH
    np.testing.assert_array_equal(answers[0].outputs["OUT"], np.full(3, -2, np.float32))
    for i, answer in enumerate(answers[1:]):
        np.testing.assert_array_equal(answer.outputs["OUT"], np.full(i + 1, 2 * i, np.float32))
    assert len({int(a.outputs["PID"][0]) for a in answers}) == 1


def test_a_crash_fails_every_execution_in_flight_and_the_restart_serves_on(gated):
    instance, gate = gated
    pid = instance.backend.process.pid  # type: ignore[attr-defined]

    async def run() -> tuple[list, int, list]:
        scheduler = DefaultScheduler([instance], ModelStats())
        tasks = await _in_flight(
            scheduler, [_request(-2)] + [_request(i) for i in range(SUBMIT_DEPTH - 1)]
        )
        in_child = scheduler._submitted_to[instance]
        gate.touch()
        failed = await asyncio.gather(*tasks, return_exceptions=True)
        # restarted: these run (the first may wait for the new child on the instance thread)
        after = await asyncio.gather(*(scheduler.infer(_request(i)) for i in range(4)))
        return failed, in_child, after

    failed, in_child, after = asyncio.run(run())
    assert in_child == SUBMIT_DEPTH  # all were in the child when it died
    for outcome in failed:
        assert isinstance(outcome, InternalError), outcome
        assert str(outcome) == (
            "Failed to process the request(s) for model instance 'gated_0_0', message: "
            "Stub process 'gated_0_0' is not healthy: it exited with exit code 3"
        )
    for i, answer in enumerate(after):
        np.testing.assert_array_equal(answer.outputs["OUT"], np.full(3, 2 * i, np.float32))
    new_pid = int(after[-1].outputs["PID"][0])
    assert new_pid != pid and new_pid == instance.backend.process.pid  # type: ignore[attr-defined]
