"""Checks on the scheduling choice: dynamic batching, sequence batching and ensembles.

Each function returns the first problem as Triton words it, or None. Ensemble checks are the
ones that need no other model (Triton's ``ValidateEnsembleSchedulingConfig``); the checks
against the composing models' configs belong to the ensemble loader.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .model_config_pb2 import DataType, ModelConfig, ModelQueuePolicy, ModelSequenceBatching
from .platform import ENSEMBLE_PLATFORM

_Control = ModelSequenceBatching.Control
_BOOLEAN_CONTROLS = (
    _Control.CONTROL_SEQUENCE_START,
    _Control.CONTROL_SEQUENCE_END,
    _Control.CONTROL_SEQUENCE_READY,
)
_CORRID_TYPES = frozenset(
    {
        DataType.TYPE_UINT64,
        DataType.TYPE_INT64,
        DataType.TYPE_UINT32,
        DataType.TYPE_INT32,
        DataType.TYPE_STRING,
    }
)


def dynamic_batching_problem(config: ModelConfig) -> str | None:
    """Preferred sizes, priority levels and ``preserve_ordering`` of ``dynamic_batching``."""
    name, batching = config.name, config.dynamic_batching
    for size in batching.preferred_batch_size:
        if size <= 0:
            return f"dynamic batching preferred size must be positive for {name}"
        if size > config.max_batch_size:
            return f"dynamic batching preferred size must be <= max batch size for {name}"
    levels = batching.priority_levels
    if levels != 0:
        if not 1 <= batching.default_priority_level <= levels:
            return f"default priority level must be in range [1, {levels}] for {name}"
        for level in batching.priority_queue_policy:
            if not 1 <= level <= levels:
                return (
                    "priority queue policy must have priority level in range "
                    f"[1, {levels}] for {name}"
                )
    if batching.preserve_ordering:
        if levels > 1:
            return f"Only one priority level is allowed when 'preserve_ordering' is true for {name}"
        policies = [batching.default_queue_policy, *batching.priority_queue_policy.values()]
        if any(_delays_on_timeout(policy) for policy in policies):
            return (
                "Queue policy can not have DELAY as timeout action when 'preserve_ordering' "
                f"is true for {name}"
            )
    return None


def _delays_on_timeout(policy: ModelQueuePolicy) -> bool:
    return (
        policy.default_timeout_microseconds != 0 and policy.timeout_action == ModelQueuePolicy.DELAY
    )


def sequence_batching_problem(config: ModelConfig) -> str | None:
    """Control inputs, Oldest preferred sizes and Direct slot utilisation of sequence batching."""
    name, batcher = config.name, config.sequence_batching
    if config.response_cache.enable:
        return (
            f"Response Cache does not currently support model {name} with sequence batching "
            "scheduler. Please disable the response cache."
        )
    problem = _control_inputs_problem(batcher, name)
    if problem:
        return problem
    if batcher.HasField("oldest"):
        for size in batcher.oldest.preferred_batch_size:
            if size <= 0:
                return f"sequence batching preferred batch size must be positive for {name}"
            if size > config.max_batch_size:
                return (
                    f"sequence batching preferred batch size must be <= max batch size for {name}"
                )
    if batcher.HasField("direct"):
        if not 0.0 <= batcher.direct.minimum_slot_utilization <= 1.0:
            return (
                f"sequence batching minimum slot utilization must be in range (0.0, 1.0] for {name}"
            )
    return None


def _control_inputs_problem(batcher: ModelSequenceBatching, name: str) -> str | None:
    seen_tensors: set[str] = set()
    for control_input in batcher.control_input:
        if not control_input.name:
            return f"sequence batching control tensor must have a name for {name}"
        if control_input.name in seen_tensors:
            return (
                f"sequence batching control tensor '{control_input.name}' is specified for "
                f"multiple control kinds for {name}"
            )
        seen_tensors.add(control_input.name)
    for kind in (*_BOOLEAN_CONTROLS, _Control.CONTROL_SEQUENCE_CORRID):
        problem = _control_kind_problem(batcher, kind, name)
        if problem:
            return problem
    return None


def _control_kind_problem(batcher: ModelSequenceBatching, kind: int, name: str) -> str | None:
    kind_name = _Control.Kind.Name(kind)
    controls = [c for ci in batcher.control_input for c in ci.control if c.kind == kind]
    if len(controls) > 1:
        return f"sequence batching specifies multiple {kind_name} tensors for {name}"
    if not controls:
        return None
    control = controls[0]
    lists = {
        "int32_false_true": len(control.int32_false_true),
        "fp32_false_true": len(control.fp32_false_true),
        "bool_false_true": len(control.bool_false_true),
    }
    given = [key for key, size in lists.items() if size]
    if kind == _Control.CONTROL_SEQUENCE_CORRID:
        if given:
            return (
                "sequence batching must not specify either 'int32_false_true', "
                f"'fp32_false_true' or 'bool_false_true' for {kind_name} for {name}"
            )
        if control.data_type not in _CORRID_TYPES:
            return (
                f"unexpected data type for control {kind_name} for {name}. Allowed data types "
                "are TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING"
            )
        return None
    if not given:
        return (
            "sequence batching must specify either 'int32_false_true', 'fp32_false_true' or "
            f"'bool_false_true' for {kind_name} for {name}"
        )
    if len(given) > 1:
        return (
            "sequence batching specifies more than one from 'int32_false_true', "
            f"'fp32_false_true' and 'bool_false_true' for {kind_name} for {name}"
        )
    if lists[given[0]] != 2:
        return (
            f"sequence batching control '{given[0]}' must have exactly 2 entries for "
            f"{kind_name} for {name}"
        )
    return None


@dataclass(eq=False)
class _Tensor:
    """A node of the ensemble's data-flow graph: one ensemble tensor."""

    name: str
    is_output: bool = False
    ready: bool = False
    prev: list[_Tensor] = field(default_factory=list)
    next: list[_Tensor] = field(default_factory=list)


def ensemble_problem(config: ModelConfig) -> str | None:
    """The ensemble checks that need no composing model (Triton's ensemble validation)."""
    name = config.name
    if config.platform != ENSEMBLE_PLATFORM:
        return (
            f"ensemble scheduling cannot be set for model '{name}' whose platform is not "
            f"{ENSEMBLE_PLATFORM}"
        )
    if config.instance_group:
        return f"instance group should not be specified for ensemble '{name}'"
    if config.HasField("optimization"):
        return f"optimization should not be specified for ensemble '{name}'"
    if config.model_warmup:
        return f"model_warmup can not be specified for ensemble '{name}'"
    if not config.ensemble_scheduling.step:
        return f"must specify 'step' for ensemble '{name}'"
    tensors: dict[str, _Tensor] = {}
    return _build_graph(config, tensors) or _data_flow_problem(config, tensors)


def _build_graph(config: ModelConfig, tensors: dict[str, _Tensor]) -> str | None:
    name = config.name
    for index, step in enumerate(config.ensemble_scheduling.step):
        for what, present in (
            ("model_name", bool(step.model_name)),
            ("input_map", bool(step.input_map)),
            ("output_map", bool(step.output_map)),
        ):
            if not present:
                return f"must specify '{what}' in step {index} of ensemble '{name}'"
        produced: list[_Tensor] = []
        for tensor_name in step.output_map.values():
            tensor = tensors.setdefault(tensor_name, _Tensor(tensor_name))
            if tensor.is_output:
                return (
                    f"ensemble tensor '{tensor_name}' can appear in an output map only once "
                    f"for ensemble '{name}' step {index}"
                )
            tensor.is_output = True
            produced.append(tensor)
        for tensor_name in step.input_map.values():
            consumed = tensors.setdefault(tensor_name, _Tensor(tensor_name))
            for output in produced:
                output.prev.append(consumed)
                consumed.next.append(output)
    return None


def _data_flow_problem(config: ModelConfig, tensors: dict[str, _Tensor]) -> str | None:
    name = config.name
    ready: deque[_Tensor] = deque()
    for model_input in config.input:
        tensor = tensors.get(model_input.name)
        if tensor is None:
            return f"ensemble input '{model_input.name}' for ensemble '{name}' is not used"
        tensor.ready = True
        ready.append(tensor)
    while ready:
        for candidate in ready.popleft().next:
            if not candidate.ready and all(p.ready for p in candidate.prev):
                candidate.ready = True
                ready.append(candidate)
    outputs: set[str] = set()
    for model_output in config.output:
        tensor = tensors.get(model_output.name)
        if tensor is None:
            return f"ensemble output '{model_output.name}' for ensemble '{name}' is not used"
        if not tensor.ready:
            return _not_written(tensor, name)
        outputs.add(tensor.name)
    for tensor in tensors.values():
        if tensor.name not in outputs and (not tensor.ready or not tensor.next):
            return f"ensemble tensor '{tensor.name}' is unused in ensemble '{name}'"
    return None


def _not_written(output: _Tensor, ensemble: str) -> str:
    """Triton's "is not written" message, naming the first unconnected tensor upstream."""
    message = f"output '{output.name}' for ensemble '{ensemble}' is not written"
    source, seen = output, set[str]()
    frontier = output.prev
    while frontier:
        upstream = next((t for t in frontier if not t.ready and t.name not in seen), None)
        if upstream is None:
            break
        seen.add(upstream.name)
        source, frontier = upstream, upstream.prev
    if source is not output:
        message += f": at least one of its depending tensors, '{source.name}', is not connected"
    return message
