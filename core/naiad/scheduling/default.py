"""The default scheduler: each request runs alone on the next free instance."""

from __future__ import annotations

import asyncio
import time

from ..errors import InternalError, NaiadError, Unavailable
from ..inference import InferRequest, InferResponse
from ..stats import ModelStats
from .base import Scheduler
from .instance import Instance


class DefaultScheduler(Scheduler):
    """FIFO over a pool of instances; a model with N instances runs at most N requests at once."""

    def __init__(self, instances: list[Instance], stats: ModelStats) -> None:
        if not instances:
            raise ValueError("a scheduler needs at least one instance")
        self._idle: asyncio.Queue[Instance] = asyncio.Queue()
        for inst in instances:
            self._idle.put_nowait(inst)
        self._stats = stats
        self._inflight = 0
        self._closed = False
        self._done = asyncio.Event()
        self._done.set()

    @property
    def inflight(self) -> int:
        return self._inflight

    async def infer(self, request: InferRequest) -> InferResponse:
        if self._closed:
            raise Unavailable(f"model '{request.model_name}' is unloading")
        stats = self._stats
        arrived = time.monotonic_ns()
        self._inflight += 1
        stats.pending += 1
        self._done.clear()
        try:
            try:
                instance = await self._idle.get()
            finally:
                stats.pending -= 1  # Triton's pending count: requests not yet executing
            try:
                result = await instance.executor.run(instance.run, [request])
            finally:
                self._idle.put_nowait(instance)
            outcome = result.responses[0]
            end = time.monotonic_ns()
            if isinstance(outcome, Exception):
                stats.record_failure(end - arrived, "BACKEND")
                if isinstance(outcome, NaiadError):
                    raise outcome
                raise InternalError(str(outcome)) from outcome
            stats.record_execution(
                request.batch_size, result.input_ns, result.infer_ns, result.output_ns
            )
            stats.record_success(
                end - arrived,
                result.start_ns - arrived,
                result.input_ns,
                result.infer_ns,
                result.output_ns,
                request.batch_size,
            )
            return outcome
        except asyncio.CancelledError:
            stats.record_failure(time.monotonic_ns() - arrived, "CANCELED")
            raise
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._done.set()

    async def drain(self, timeout: float) -> None:
        self._closed = True
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except asyncio.TimeoutError:
            pass
