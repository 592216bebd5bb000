"""Triton's load-time checks (``ValidateModelConfig``, ``ValidateInstanceGroup``,
``ValidateModelIOConfig``), for a config that has been filled and normalised.

Messages keep Triton's wording, which names the model (mostly as ``... for <model>``).
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import ConfigError
from .model_config_pb2 import ModelConfig, ModelInstanceGroup
from .platform import ENSEMBLE_PLATFORM, PLATFORM_BACKENDS, check_platform_backend_pair
from .validate_io import TENSORRT_PLATFORM, validate_io
from .validate_scheduling import (
    dynamic_batching_problem,
    ensemble_problem,
    sequence_batching_problem,
)


def validate_model_config(
    config: ModelConfig, *, platform_backends: Mapping[str, str] = PLATFORM_BACKENDS
) -> None:
    """Raise :class:`ConfigError` for the first problem Triton would report at load.

    Call it after :func:`fill_platform_backend` and :func:`normalize_model_config` (it expects
    ``version_policy`` and, except for ensembles, ``instance_group`` to be filled). Checks, in
    Triton's order: name; platform/backend; ``max_batch_size >= 0``; version policy; dynamic
    batching (preferred sizes, priority levels, ``preserve_ordering``); sequence batching
    (control inputs, CORRID type, Oldest sizes, Direct utilisation); ensemble structure
    (platform, no instance groups / optimization / warmup, steps, data flow); response cache
    vs. decoupled; model metrics; instance groups (kinds, GPUs, TensorRT profiles); inputs and
    outputs (names, data types, dims, reshape, formats, shape tensors, duplicates, batch I/O).
    Dynamic batching with ``max_batch_size`` 0 is accepted, as Triton does (it cannot batch).
    """
    problem = _model_problem(config, platform_backends)
    if problem:
        raise ConfigError(problem)
    validate_io(config)


def _model_problem(config: ModelConfig, platform_backends: Mapping[str, str]) -> str | None:
    name = config.name
    if not name:
        return "model configuration must specify 'name'"
    problem = _platform_problem(config, platform_backends)
    if problem:
        return problem
    if config.max_batch_size < 0:
        return f"'max_batch_size' must be non-negative value for {name}"
    if not config.HasField("version_policy"):
        return f"must specify 'version policy' for {name}"
    return (
        _scheduling_problem(config)
        or _response_cache_problem(config)
        or _metrics_problem(config)
        or instance_group_problem(config)
    )


def _platform_problem(config: ModelConfig, platform_backends: Mapping[str, str]) -> str | None:
    name, platform, backend = config.name, config.platform, config.backend
    if not platform and not backend:
        return f"must specify 'platform' or 'backend' for '{name}'"
    if not backend and platform != ENSEMBLE_PLATFORM:
        return f"unexpected platform type '{platform}' for {name}"
    try:
        check_platform_backend_pair(config, platform_backends=platform_backends)
    except ConfigError as err:
        return err.message
    return None


def _scheduling_problem(config: ModelConfig) -> str | None:
    choice = config.WhichOneof("scheduling_choice")
    if choice == "dynamic_batching":
        return dynamic_batching_problem(config)
    if choice == "sequence_batching":
        return sequence_batching_problem(config)
    if choice == "ensemble_scheduling":
        return ensemble_problem(config)
    if config.platform == ENSEMBLE_PLATFORM:
        return (
            f"ensemble scheduling must be set for ensemble {config.name} whose platform is "
            f"{ENSEMBLE_PLATFORM}"
        )
    return None


def _response_cache_problem(config: ModelConfig) -> str | None:
    if config.model_transaction_policy.decoupled and config.response_cache.enable:
        return (
            f"Response Cache does not currently support model {config.name} with 'decoupled' "
            "transaction policy. Please disable the response cache."
        )
    return None


def _metrics_problem(config: ModelConfig) -> str | None:
    for control in config.model_metrics.metric_control:
        if not control.HasField("metric_identifier"):
            problem = "metric control must specify 'metric_identifier'"
        elif not control.metric_identifier.family:
            problem = "metric identifier must specify non-empty 'family'"
        elif not control.HasField("histogram_options"):
            problem = "metric control must specify 'histogram_options'"
        elif not control.histogram_options.buckets:
            problem = "histogram options must specify non-empty 'buckets'"
        else:
            continue
        return f"{problem} for {config.name}"
    return None


def instance_group_problem(config: ModelConfig) -> str | None:
    """Triton's ``ValidateInstanceGroup`` for a normalised config, GPU ids aside.

    Whether listed GPUs exist is checked by :func:`normalize_instance_groups`, which knows the
    GPU count.
    """
    if config.HasField("ensemble_scheduling"):
        return None
    if not config.instance_group:
        return f"must specify one or more 'instance group's for {config.name}"
    for group in config.instance_group:
        problem = _group_problem(config, group)
        if problem:
            return problem
    return None


def _group_problem(config: ModelConfig, group: ModelInstanceGroup) -> str | None:
    where = f"instance group {group.name} of model {config.name}"
    kind = group.kind
    if kind == ModelInstanceGroup.KIND_AUTO:
        return f"{where} has unexpected kind KIND_AUTO"
    if kind in (ModelInstanceGroup.KIND_CPU, ModelInstanceGroup.KIND_MODEL) and group.gpus:
        kind_name = ModelInstanceGroup.Kind.Name(kind)
        return f"{where} has kind {kind_name} but specifies one or more GPUs"
    if kind == ModelInstanceGroup.KIND_GPU and not group.gpus:
        return f"{where} has kind KIND_GPU but specifies no GPUs"
    if group.profile and config.platform != TENSORRT_PLATFORM:
        return (
            f"{where} and platform {config.platform} specifies profile field which is only "
            "supported for TensorRT models"
        )
    for profile in group.profile:
        if not _is_non_negative_int(profile):
            return (
                f"{where} and platform {config.platform} specifies invalid profile {profile}. "
                "The field should contain the string representation of a non-negative integer."
            )
    return None


def _is_non_negative_int(text: str) -> bool:
    try:
        return int(text) >= 0
    except ValueError:
        return False
