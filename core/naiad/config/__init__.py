"""Triton model configuration: the ModelConfig schema, parsing, normalisation and validation.

``model_config.proto`` is naiad's own copy of Triton's ModelConfig schema (same message, field
and enum names and numbers; package ``naiad.inference`` so it can share a process with
tritonclient). ``model_config_pb2.py`` / ``.pyi`` are generated from it and committed; after
editing the proto, regenerate them with::

    python -m venv /tmp/gen && /tmp/gen/bin/pip install grpcio-tools==1.74.0
    core/naiad/config/regenerate.sh /tmp/gen/bin/python

(grpcio-tools 1.74.0 emits code that needs protobuf >= 6.31.1 at run time; see the script.)

A model's effective config is built in Triton's order::

    config = parse_model_config(text, model_name=name)        # or model_config_from_json(...)
    fill_platform_backend(config, first_version_dir)           # platform <-> backend, file name
    ...                                                        # backend auto-complete
    normalize_model_config(config, model_name=name, gpu_count=n, default_instance_count=c)
    validate_model_config(config)
    model_config_to_json(config)                               # GET /v2/models/{m}/config
"""

from __future__ import annotations

from .errors import ConfigError
from .formats import (
    message_to_text,
    model_config_from_json,
    model_config_to_json,
    parse_model_config,
)
from .model_config_pb2 import (
    BatchInput,
    BatchOutput,
    DataType,
    ModelConfig,
    ModelDynamicBatching,
    ModelEnsembling,
    ModelInput,
    ModelInstanceGroup,
    ModelOptimizationPolicy,
    ModelOutput,
    ModelParameter,
    ModelQueuePolicy,
    ModelSequenceBatching,
    ModelTensorReshape,
    ModelTransactionPolicy,
    ModelVersionPolicy,
    ModelWarmup,
)
from .normalize import (
    SEQUENCE_IDLE_DEFAULT_MICROSECONDS,
    is_ensemble,
    normalize_instance_groups,
    normalize_model_config,
)
from .platform import (
    BACKEND_DEFAULT_MODEL_FILENAMES,
    BACKEND_PLATFORMS,
    DEFAULT_MODEL_FILENAMES,
    ENSEMBLE_PLATFORM,
    PLATFORM_BACKENDS,
    check_platform_backend_pair,
    default_model_filename,
    fill_platform_backend,
    guess_platform_from_files,
)
from .validate import validate_model_config
from .validate_io import element_count
from .versions import missing_versions, select_versions

__all__ = [
    "BACKEND_DEFAULT_MODEL_FILENAMES",
    "BACKEND_PLATFORMS",
    "DEFAULT_MODEL_FILENAMES",
    "ENSEMBLE_PLATFORM",
    "PLATFORM_BACKENDS",
    "SEQUENCE_IDLE_DEFAULT_MICROSECONDS",
    "BatchInput",
    "BatchOutput",
    "ConfigError",
    "DataType",
    "ModelConfig",
    "ModelDynamicBatching",
    "ModelEnsembling",
    "ModelInput",
    "ModelInstanceGroup",
    "ModelOptimizationPolicy",
    "ModelOutput",
    "ModelParameter",
    "ModelQueuePolicy",
    "ModelSequenceBatching",
    "ModelTensorReshape",
    "ModelTransactionPolicy",
    "ModelVersionPolicy",
    "ModelWarmup",
    "check_platform_backend_pair",
    "default_model_filename",
    "element_count",
    "fill_platform_backend",
    "guess_platform_from_files",
    "is_ensemble",
    "message_to_text",
    "missing_versions",
    "model_config_from_json",
    "model_config_to_json",
    "normalize_instance_groups",
    "normalize_model_config",
    "parse_model_config",
    "select_versions",
    "validate_model_config",
]
