"""Load-time work for ensembles: composing models first, then the checks that need their configs.

Triton loads an ensemble only after every composing model is READY, loading those that are not
(scheduling.md §5), and then checks the ensemble against the composing models' configs
(``ensemble_utils.cc``): map keys name real inputs and outputs, every required input is mapped,
data types and shapes agree along each edge, and the ensemble's ``max_batch_size`` does not exceed
a batching composing model's. The checks that need no other model are in
:func:`naiad.config.validate_model_config`.

One :class:`EnsembleLinker` belongs to one :class:`~naiad.models.ModelManager` and runs on its
event loop. While ensemble ``A`` waits for a composing model ``B`` to load, ``A -> B`` is recorded,
so a cycle (``B`` waiting for ``A``) fails with a clear error instead of deadlocking.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import repository
from .config import ModelConfig, is_ensemble
from .errors import ModelLoadError, NaiadError
from .scheduling.ensemble import Step, steps_of
from .signature import Signature, TensorSpec
from .tensors import protocol_to_config

if TYPE_CHECKING:
    from .models import ModelManager
    from .registry import ModelVersion

__all__ = ["EnsembleLinker"]


@dataclass(frozen=True, slots=True)
class _Edge:
    """One use of an ensemble tensor: who reads or writes it, with what type and shape."""

    where: str
    datatype: str
    shape: tuple[int, ...]


class EnsembleLinker:
    """Loads an ensemble's composing models and checks the ensemble against them."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager
        #: ensemble being loaded -> composing models it is waiting for
        self._waits: dict[str, set[str]] = {}

    async def link(self, name: str, config: ModelConfig, versions: dict[int, ModelVersion]) -> None:
        """Make every composing model of ``config`` READY, check the ensemble against them, and
        give each version the labels of the composing outputs it exposes. Raises
        :class:`ModelLoadError` naming the composing model when any of that fails."""
        steps = steps_of(config)
        for dep in dict.fromkeys(s.model_name for s in steps):
            await self._ensure_loaded(name, dep)
        composing = {s.index: self._resolve(name, s) for s in steps}
        _check(config, steps, composing)
        for step in steps:
            labels = composing[step.index].labels
            for output, tensor in step.output_map.items():
                if output in labels:
                    for mv in versions.values():
                        mv.labels.setdefault(tensor, labels[output])

    async def _ensure_loaded(self, name: str, dep: str) -> None:
        manager = self._manager
        if self._depends_on(dep, name):
            raise ModelLoadError(
                f"circular dependency: ensemble '{name}' uses model '{dep}', which uses '{name}'"
            )
        waits = self._waits.setdefault(name, set())
        waits.add(dep)
        try:
            lock = manager.registry.lock(dep)
            if lock.locked():
                async with lock:  # a load (or unload) of ``dep`` is under way: let it finish
                    pass
            elif not _has_ready(manager, dep):
                found = await asyncio.to_thread(repository.find_model, manager.repositories, dep)
                if found is None:
                    raise ModelLoadError(
                        f"ensemble '{name}' uses model '{dep}', which is not in the model "
                        "repository"
                    )
                try:
                    await manager.load(dep)
                except NaiadError as exc:
                    raise ModelLoadError(
                        f"ensemble '{name}' uses model '{dep}', which failed to load: {exc.message}"
                    ) from exc
        finally:
            waits.discard(dep)
            if not waits:
                self._waits.pop(name, None)

    def _depends_on(self, start: str, target: str) -> bool:
        """Whether ``start`` uses ``target``, directly or through other ensembles (loaded ones,
        or ones being loaded and waiting for their composing models)."""
        stack, seen = [start], set()
        while stack:
            current = stack.pop()
            if current == target:
                return True
            if current in seen:
                continue
            seen.add(current)
            stack.extend(self._waits.get(current, ()))
            for mv in self._manager.versions(current).values():
                if mv.config is not None and is_ensemble(mv.config):
                    stack.extend(s.model_name for s in mv.config.ensemble_scheduling.step)
        return False

    def _resolve(self, name: str, step: Step) -> ModelVersion:
        try:
            mv = self._manager.resolve(step.model_name, step.model_version)
        except NaiadError as exc:
            raise ModelLoadError(
                f"ensemble '{name}' step {step.index} uses model '{step.model_name}', which is "
                f"not available: {exc.message}"
            ) from exc
        if mv.signature is None:
            raise ModelLoadError(
                f"model '{step.model_name}' used by ensemble '{name}' has no signature"
            )
        return mv


def _has_ready(manager: ModelManager, name: str) -> bool:
    try:
        manager.resolve(name)
    except NaiadError:
        return False
    return True


def _check(config: ModelConfig, steps: list[Step], composing: dict[int, ModelVersion]) -> None:
    """Triton's checks of an ensemble against its composing models' signatures."""
    name = config.name
    ensemble = Signature.from_config(config)
    edges: dict[str, list[_Edge]] = {}
    for spec in ensemble.inputs.values():
        edges.setdefault(spec.name, []).append(
            _Edge(f"ensemble input '{spec.name}'", spec.datatype, _full(ensemble, spec))
        )
    for spec in ensemble.outputs.values():
        edges.setdefault(spec.name, []).append(
            _Edge(f"ensemble output '{spec.name}'", spec.datatype, _full(ensemble, spec))
        )
    for step in steps:
        sig = composing[step.index].signature
        assert sig is not None
        model = step.model_name
        for key, tensor in step.input_map.items():
            if key not in sig.inputs:
                raise ModelLoadError(
                    f"in ensemble {name}, ensemble tensor {tensor} is mapping to non-existing "
                    f"input {key} in model {model}"
                )
            edges.setdefault(tensor, []).append(_edge(sig, sig.inputs[key], "input", model))
        for key, tensor in step.output_map.items():
            if key not in sig.outputs:
                raise ModelLoadError(
                    f"in ensemble {name}, ensemble tensor {tensor} is mapped from non-existing "
                    f"output {key} in model {model}"
                )
            edges.setdefault(tensor, []).append(_edge(sig, sig.outputs[key], "output", model))
        for spec in sig.inputs.values():
            if not spec.optional and spec.name not in step.input_map:
                raise ModelLoadError(
                    f"in ensemble {name}, input {spec.name} in model {model} is not mapped to "
                    "any ensemble tensors"
                )
        if 0 < sig.max_batch_size < config.max_batch_size:
            raise ModelLoadError(
                f"ensemble {name} allows maximum batch size {config.max_batch_size}, but it "
                f"contains model {model} which only allows maximum batch size to be "
                f"{sig.max_batch_size}"
            )
    for tensor, uses in edges.items():
        first = uses[0]
        for other in uses[1:]:
            if other.datatype != first.datatype:
                raise ModelLoadError(
                    f"in ensemble {name}, tensor '{tensor}': inconsistent data type: "
                    f"{protocol_to_config(first.datatype)} for {first.where}, "
                    f"{protocol_to_config(other.datatype)} for {other.where}"
                )
            if not _compatible(first.shape, other.shape):
                raise ModelLoadError(
                    f"in ensemble {name}, tensor '{tensor}': inconsistent shape: "
                    f"{list(first.shape)} for {first.where}, {list(other.shape)} for "
                    f"{other.where}"
                )


def _edge(sig: Signature, spec: TensorSpec, kind: str, model: str) -> _Edge:
    return _Edge(f"{kind} '{spec.name}' of model '{model}'", spec.datatype, _full(sig, spec))


def _full(sig: Signature, spec: TensorSpec) -> tuple[int, ...]:
    return tuple(sig.full_shape(spec))


def _compatible(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))
