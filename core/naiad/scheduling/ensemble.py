"""The ensemble scheduler: a data-flow graph of composing models, run one request at a time.

Triton's ensemble (scheduling.md §5): the ensemble's tensors are its inputs, its outputs and every
name in the steps' ``input_map`` / ``output_map``. A step starts as soon as every tensor it reads
exists; steps that do not depend on each other run concurrently (one asyncio task each). Each step
is an ordinary request to the composing model, resolved from the
:class:`~naiad.registry.ModelRegistry` when the step starts, validated against that model's
signature and handed to that model's own scheduler — so ensemble traffic batches with direct
traffic, and each composing model counts the requests it served in its own statistics. Tensors pass
between steps as the arrays the steps produced: nothing is serialised or copied on the way.

A step's failure is the ensemble request's failure, with a message that names the ensemble, the
step and the composing model; the other running steps are cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InternalError, NaiadError, Unavailable
from ..inference import InferRequest, InferResponse, RequestedOutput
from ..signature import Signature
from ..stats import ModelStats
from .base import SchedulerCore

if TYPE_CHECKING:
    from ..config import ModelConfig
    from ..registry import ModelRegistry

__all__ = ["EnsembleScheduler", "Step", "steps_of"]


@dataclass(frozen=True, slots=True)
class Step:
    """One ``ensemble_scheduling.step``, with its position (0-based) for error messages."""

    index: int
    model_name: str
    #: -1: the highest READY version
    model_version: int
    #: composing model input -> ensemble tensor
    input_map: Mapping[str, str]
    #: composing model output -> ensemble tensor
    output_map: Mapping[str, str]

    def describe(self, ensemble: str) -> str:
        """``ensemble 'e' step 1 (model 'm')``."""
        return f"ensemble '{ensemble}' step {self.index} (model '{self.model_name}')"


def steps_of(config: ModelConfig) -> list[Step]:
    """The steps of an ensemble config, as plain values."""
    return [
        Step(i, s.model_name, s.model_version, dict(s.input_map), dict(s.output_map))
        for i, s in enumerate(config.ensemble_scheduling.step)
    ]


def step_error(exc: NaiadError, where: str) -> NaiadError:
    """``exc`` with ``where`` in front of its message, same class and HTTP status."""
    error = type(exc)(f"{where}: {exc.message}")
    error.code = exc.code
    return error


class EnsembleScheduler(SchedulerCore):
    """Runs an ensemble's steps for each request (the ensemble has no instances of its own)."""

    def __init__(
        self, config: ModelConfig, registry: ModelRegistry, stats: ModelStats, signature: Signature
    ) -> None:
        super().__init__(stats)
        self._name = config.name
        self._registry = registry
        self._signature = signature
        self._steps = steps_of(config)

    @property
    def composing_models(self) -> list[str]:
        """Names of the models the steps call, in step order, without repeats."""
        return list(dict.fromkeys(step.model_name for step in self._steps))

    async def infer(self, request: InferRequest) -> InferResponse:
        self._refuse_if_closed(request)
        stats = self._stats
        arrived = time.monotonic_ns()
        self._count_in()  # the whole ensemble run counts as one pending request
        try:
            tensors: dict[str, np.ndarray] = dict(request.inputs)
            await self._run_steps(request, tensors)
            wanted = (
                [o.name for o in request.outputs]
                if request.outputs
                else list(self._signature.outputs)
            )
            outputs = {name: tensors[name] for name in wanted}
        except asyncio.CancelledError:
            stats.record_failure(time.monotonic_ns() - arrived, "CANCELED")
            raise
        except NaiadError:
            stats.record_failure(time.monotonic_ns() - arrived, "BACKEND")
            raise
        finally:
            self._dequeued()
            self._finished()
        total = time.monotonic_ns() - arrived
        stats.record_execution(request.batch_size, 0, 0, 0)
        stats.record_success(total, 0, 0, 0, 0, request.batch_size)
        return InferResponse(request.model_name, request.model_version, request.id, outputs)

    async def _run_steps(self, request: InferRequest, tensors: dict[str, np.ndarray]) -> None:
        """Start every step whose inputs exist; as steps finish, start the ones they unblock."""
        waiting = list(self._steps)
        running: dict[asyncio.Task[dict[str, np.ndarray]], Step] = {}
        try:
            while True:
                ready = [s for s in waiting if all(t in tensors for t in s.input_map.values())]
                for step in ready:
                    waiting.remove(step)
                if len(ready) == 1 and not running:
                    # a chain: no task needed for the only step that can run
                    tensors.update(await self._run_step(ready[0], request, tensors))
                    continue
                for step in ready:
                    task = asyncio.create_task(self._run_step(step, request, tensors))
                    running[task] = step
                if not running:
                    break
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                error: BaseException | None = None
                for task in done:
                    del running[task]
                    if task.exception() is not None:
                        error = error or task.exception()
                    else:
                        tensors.update(task.result())
                if error is not None:
                    raise error
        finally:
            if running:
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)
        if waiting:  # ruled out by load-time validation; kept as a guard
            names = ", ".join(f"step {s.index} (model '{s.model_name}')" for s in waiting)
            raise InternalError(f"ensemble '{self._name}': {names} never got their inputs")

    async def _run_step(
        self, step: Step, request: InferRequest, tensors: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """One composing-model request; its outputs under their ensemble tensor names."""
        where = step.describe(self._name)
        try:
            mv = self._registry.resolve(step.model_name, step.model_version)
        except NaiadError as exc:
            raise Unavailable(
                f"{where}: composing model '{step.model_name}' is not available: {exc.message}"
            ) from exc
        if mv.scheduler is None or mv.signature is None:
            raise Unavailable(f"{where}: composing model '{step.model_name}' is not ready")
        sub = InferRequest(
            model_name=step.model_name,
            model_version=mv.version,
            id=request.id,
            inputs={name: tensors[tensor] for name, tensor in step.input_map.items()},
            outputs=[RequestedOutput(name) for name in step.output_map],
            parameters=dict(request.parameters),
            sequence_id=request.sequence_id,
            sequence_start=request.sequence_start,
            sequence_end=request.sequence_end,
            priority=request.priority,
            timeout_us=request.timeout_us,
        )
        try:
            mv.signature.validate(sub)
            response = await mv.scheduler.infer(sub)
        except NaiadError as exc:
            raise step_error(exc, where) from exc
        produced: dict[str, np.ndarray] = {}
        for output, tensor in step.output_map.items():
            if output not in response.outputs:
                raise InternalError(f"{where}: the model did not produce output '{output}'")
            produced[tensor] = response.outputs[output]
        return produced

    async def drain(self, timeout: float) -> None:
        await self._close_and_wait(timeout)
