"""The schedulers' hand-over between the event loop and the instance threads, in-process.

Real instances of the test plugins' backends (``tests/plugins/naiad_test_backends.py``) on their
own threads, driven straight through the scheduler objects, so the tests can cancel a queued
request and read the queue counters afterwards.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from naiad import InferRequest, InstanceContext
from naiad.config import parse_model_config
from naiad.errors import InternalError, Unavailable
from naiad.scheduling.default import DefaultScheduler
from naiad.scheduling.dynamic import DynamicBatcher
from naiad.scheduling.instance import Instance
from naiad.signature import Signature
from naiad.stats import ModelStats

_spec = importlib.util.spec_from_file_location(
    "naiad_test_backends", Path(__file__).parent / "plugins" / "naiad_test_backends.py"
)
backends = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(backends)

IO = """
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "OUTPUT2" data_type: TYPE_INT32 dims: [ 1 ] }
]
"""


def _scheduler(tmp_path, backend_cls, extra: str, max_batch_size: int = 1):
    config = parse_model_config(
        f'backend: "{backend_cls.name}"\nmax_batch_size: {max_batch_size}\n{IO}\n{extra}',
        model_name="m",
    )
    if backend_cls is backends.FailBackend:
        del config.output[1:]
    backend = backend_cls(config, tmp_path, tmp_path / "1", InstanceContext("m_0", "KIND_CPU"))
    backend.load()
    signature = Signature.from_config(config)
    instance = Instance(backend, signature)
    stats = ModelStats()
    if config.HasField("dynamic_batching"):
        return DynamicBatcher([instance], stats, signature, config.dynamic_batching), stats
    return DefaultScheduler([instance], stats), stats


def _request(value: float, timeout_us: int | None = None) -> InferRequest:
    return InferRequest(
        "m", 1, inputs={"INPUT0": np.full((1, 1), value, np.float32)}, timeout_us=timeout_us
    )


async def _queued(stats: ModelStats, count: int) -> None:
    while stats.pending < count:
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("preserve_ordering", [False, True])
def test_a_cancelled_request_delayed_by_its_timeout_leaves_the_queue(tmp_path, preserve_ordering):
    scheduler, stats = _scheduler(
        tmp_path,
        backends.SleepBackend,
        "dynamic_batching { "
        + ("preserve_ordering: true " if preserve_ordering else "")
        + "default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 1000 } }",
    )

    async def run():
        busy = asyncio.ensure_future(scheduler.infer(_request(300)))
        await _queued(stats, 0)
        await asyncio.sleep(0.05)  # busy is executing
        doomed = asyncio.ensure_future(scheduler.infer(_request(1)))
        await _queued(stats, 1)
        await asyncio.sleep(0.02)  # past its 1 ms timeout: moved to the delayed queue
        doomed.cancel()
        after = asyncio.ensure_future(scheduler.infer(_request(2)))
        done, _ = await asyncio.wait([busy, after], timeout=10)
        assert busy in done and after in done
        assert after.result().outputs["OUTPUT0"][0, 0] == 2
        await asyncio.sleep(0.05)
        assert (scheduler.inflight, stats.pending) == (0, 0)

    asyncio.run(run())


def test_a_request_timeout_fires_behind_a_request_without_one(tmp_path):
    scheduler, stats = _scheduler(
        tmp_path,
        backends.SleepBackend,
        "dynamic_batching { default_queue_policy { allow_timeout_override: true } }",
    )

    async def run():
        busy = asyncio.ensure_future(scheduler.infer(_request(500)))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(scheduler.infer(_request(1)))
        await _queued(stats, 1)
        short = asyncio.ensure_future(scheduler.infer(_request(1, timeout_us=1000)))
        with pytest.raises(Unavailable, match="Request timeout expired"):
            await short
        assert not busy.done()  # rejected while the first request still runs
        await asyncio.gather(busy, waiting)
        assert (scheduler.inflight, stats.pending) == (0, 0)

    asyncio.run(run())


@pytest.mark.parametrize("batching", [False, True])
def test_a_backend_that_exits_fails_its_request_and_the_instance_goes_on(tmp_path, batching):
    scheduler, stats = _scheduler(
        tmp_path, backends.FailBackend, "dynamic_batching { }" if batching else "", 4
    )

    async def run():
        with pytest.raises(InternalError, match="SystemExit"):
            await asyncio.wait_for(scheduler.infer(_request(-999)), 10)
        response = await asyncio.wait_for(scheduler.infer(_request(5)), 10)
        assert response.outputs["OUTPUT0"][0, 0] == 5
        assert scheduler.inflight == 0

    asyncio.run(run())
