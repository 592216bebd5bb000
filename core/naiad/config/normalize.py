"""The defaults Triton fills in at load (``NormalizeModelConfig``, ``NormalizeInstanceGroup``).

See model-config.md §7. Run after the backend's auto-complete and before
:func:`naiad.config.validate_model_config`; the result is the "effective" config that
``GET /v2/models/{m}/config`` shows.
"""

from __future__ import annotations

from .errors import ConfigError
from .model_config_pb2 import ModelConfig, ModelInstanceGroup
from .platform import ENSEMBLE_PLATFORM

#: Triton's SEQUENCE_IDLE_DEFAULT_MICROSECONDS.
SEQUENCE_IDLE_DEFAULT_MICROSECONDS = 1_000_000

_KIND_AUTO = ModelInstanceGroup.KIND_AUTO
_KIND_GPU = ModelInstanceGroup.KIND_GPU
_KIND_CPU = ModelInstanceGroup.KIND_CPU


def is_ensemble(config: ModelConfig) -> bool:
    """True for an ensemble: platform ``ensemble`` or an ``ensemble_scheduling`` section."""
    return config.platform == ENSEMBLE_PLATFORM or config.HasField("ensemble_scheduling")


def normalize_model_config(
    config: ModelConfig,
    *,
    model_name: str,
    default_instance_count: int = 1,
    gpu_count: int = 0,
    preferred_kind: str | None = None,
) -> None:
    """Fill Triton's load-time defaults into ``config``, in place.

    - ``name`` from the model directory; a different explicit name is an error.
    - ``version_policy`` absent: ``latest { num_versions: 1 }``.
    - ``dynamic_batching.preferred_batch_size`` empty: ``[max_batch_size]`` when that is > 0;
      the same for ``sequence_batching.oldest.preferred_batch_size``.
    - ``sequence_batching.max_sequence_idle_microseconds`` 0: 1 000 000.
    - Not for ensembles: ``optimization.input_pinned_memory`` / ``output_pinned_memory`` absent:
      ``{ enable: true }``; instance groups as :func:`normalize_instance_groups`.

    ``gpu_count`` is the number of usable GPUs (ids ``0..gpu_count-1``);
    ``default_instance_count`` the instance count of a CPU group that gives none (Triton: 2 for
    onnxruntime and tensorflow, else 1); ``preferred_kind`` the backend's preferred kind
    (``"KIND_CPU"``, ...) for the group added when the config has none.
    """
    _normalize_name(config, model_name)
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    _normalize_batching(config)
    if is_ensemble(config):
        return
    optimization = config.optimization
    if not optimization.HasField("input_pinned_memory"):
        optimization.input_pinned_memory.enable = True
    if not optimization.HasField("output_pinned_memory"):
        optimization.output_pinned_memory.enable = True
    normalize_instance_groups(
        config,
        default_instance_count=default_instance_count,
        gpu_count=gpu_count,
        preferred_kind=preferred_kind,
    )


def _normalize_name(config: ModelConfig, model_name: str) -> None:
    if not config.name:
        config.name = model_name
    elif config.name != model_name:
        raise ConfigError(
            f"unexpected directory name '{model_name}' for model '{config.name}', "
            "directory name must equal model name"
        )


def _normalize_batching(config: ModelConfig) -> None:
    max_batch_size = config.max_batch_size
    if config.HasField("dynamic_batching"):
        preferred = config.dynamic_batching.preferred_batch_size
        if not preferred and max_batch_size > 0:
            preferred.append(max_batch_size)
    if config.HasField("sequence_batching"):
        batcher = config.sequence_batching
        if batcher.max_sequence_idle_microseconds == 0:
            batcher.max_sequence_idle_microseconds = SEQUENCE_IDLE_DEFAULT_MICROSECONDS
        if batcher.HasField("oldest"):
            preferred = batcher.oldest.preferred_batch_size
            if not preferred and max_batch_size > 0:
                preferred.append(max_batch_size)


def normalize_instance_groups(
    config: ModelConfig,
    *,
    default_instance_count: int = 1,
    gpu_count: int = 0,
    preferred_kind: str | None = None,
) -> None:
    """Triton's ``NormalizeInstanceGroup``, plus its GPU checks, in place (not for ensembles).

    No group: add one named after the model, of ``preferred_kind`` (a ``KIND_GPU`` preference is
    ignored without GPUs), else ``KIND_AUTO``. For each group: name ``<model>_<index>`` if unset;
    ``KIND_AUTO`` becomes ``KIND_CPU`` without GPUs or when a listed GPU is absent, else
    ``KIND_GPU``; a count below 1 becomes ``default_instance_count`` for CPU groups, else 1; a
    ``KIND_GPU`` group without ``gpus`` gets every GPU. A ``KIND_GPU`` group that cannot be placed
    raises :class:`ConfigError` with Triton's message.
    """
    if is_ensemble(config):
        return
    if not config.instance_group:
        group = config.instance_group.add(name=config.name)
        if preferred_kind is not None:
            kind = ModelInstanceGroup.Kind.Value(preferred_kind)
            if kind != _KIND_GPU or gpu_count > 0:
                group.kind = kind  # type: ignore[assignment,unused-ignore]
    for index, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{index}"
        if group.kind == _KIND_AUTO:
            usable = gpu_count > 0 and all(0 <= gpu < gpu_count for gpu in group.gpus)
            group.kind = _KIND_GPU if usable else _KIND_CPU
        if group.count < 1:
            group.count = default_instance_count if group.kind == _KIND_CPU else 1
        if group.kind == _KIND_GPU:
            _place_gpu_group(config.name, group, gpu_count)


def _place_gpu_group(model_name: str, group: ModelInstanceGroup, gpu_count: int) -> None:
    where = f"instance group {group.name} of model {model_name}"
    if not group.gpus:
        if gpu_count == 0:
            raise ConfigError(f"{where} has kind KIND_GPU but no GPUs are available")
        group.gpus.extend(range(gpu_count))
        return
    for gpu in group.gpus:
        if not 0 <= gpu < gpu_count:
            available = ", ".join(str(i) for i in range(gpu_count))
            raise ConfigError(
                f"{where} specifies invalid or unsupported gpu id {gpu}. "
                f"GPUs with at least the minimum required CUDA compute compatibility are: "
                f"{available}"
            )
