"""Triton's ``platform`` / ``backend`` pairs, default model file names and file sniffing.

Mirrors Triton's ``AutoCompleteBackendFields`` (model-config.md §2): the missing one of the pair
is filled from the other, or, when both are missing, from ``default_model_filename`` or from the
files in the first version directory; ``default_model_filename`` gets the platform's default.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal, NamedTuple

from .errors import ConfigError
from .model_config_pb2 import ModelConfig

ENSEMBLE_PLATFORM = "ensemble"

#: Triton platform name -> backend name. ``ensemble`` has no backend.
PLATFORM_BACKENDS: Mapping[str, str] = MappingProxyType(
    {
        "tensorrt_plan": "tensorrt",
        "tensorflow_graphdef": "tensorflow",
        "tensorflow_savedmodel": "tensorflow",
        "onnxruntime_onnx": "onnxruntime",
        "pytorch_libtorch": "pytorch",
        "libtorch": "pytorch",
        "torch_aoti": "pytorch",
        "caffe2_netdef": "caffe2",
        "custom": "custom",
        ENSEMBLE_PLATFORM: "",
    }
)

#: Backend name -> the platform Triton fills in when only the backend is given. TensorFlow is
#: absent: its platform depends on the model file (see :func:`fill_platform_backend`).
BACKEND_PLATFORMS: Mapping[str, str] = MappingProxyType(
    {
        "tensorrt": "tensorrt_plan",
        "onnxruntime": "onnxruntime_onnx",
        "pytorch": "pytorch_libtorch",
        "caffe2": "caffe2_netdef",
        "custom": "custom",
    }
)

#: Platform -> model file (or directory) name in a version directory.
DEFAULT_MODEL_FILENAMES: Mapping[str, str] = MappingProxyType(
    {
        "tensorrt_plan": "model.plan",
        "tensorflow_graphdef": "model.graphdef",
        "tensorflow_savedmodel": "model.savedmodel",
        "onnxruntime_onnx": "model.onnx",
        "pytorch_libtorch": "model.pt",
        "libtorch": "model.pt",
        "torch_aoti": "model.pt2",
        "caffe2_netdef": "model.netdef",
        "custom": "libcustom.so",
    }
)

#: Backend -> model file name, for backends that have no platform name.
BACKEND_DEFAULT_MODEL_FILENAMES: Mapping[str, str] = MappingProxyType(
    {"python": "model.py", "openvino": "model.xml"}
)

_PYTHON_RUNTIME = "model.py"


class _FileRule(NamedTuple):
    filename: str
    kind: Literal["file", "dir", "any"]
    platform: str
    backend: str


# Checked in this order, as Triton does (TensorFlow, TensorRT, ONNX, OpenVINO, PyTorch, Python),
# then the file kinds naiad adds (Caffe2 NetDef and the legacy custom backend of 1.x).
_FILE_RULES: tuple[_FileRule, ...] = (
    _FileRule("model.savedmodel", "dir", "tensorflow_savedmodel", "tensorflow"),
    _FileRule("model.graphdef", "file", "tensorflow_graphdef", "tensorflow"),
    _FileRule("model.plan", "file", "tensorrt_plan", "tensorrt"),
    _FileRule("model.onnx", "any", "onnxruntime_onnx", "onnxruntime"),
    _FileRule("model.xml", "any", "", "openvino"),
    _FileRule("model.pt", "file", "pytorch_libtorch", "pytorch"),
    _FileRule("model.pt2", "file", "torch_aoti", "pytorch"),
    _FileRule("model.py", "any", "", "python"),
    _FileRule("model.netdef", "file", "caffe2_netdef", "caffe2"),
    _FileRule("libcustom.so", "file", "custom", "custom"),
)


def guess_platform_from_files(version_dir: Path) -> tuple[str, str] | None:
    """``(platform, backend)`` for the model file found in ``version_dir``, or None.

    ``model.savedmodel/`` (a directory) is a TF SavedModel, ``model.graphdef`` a TF GraphDef,
    ``model.plan`` TensorRT, ``model.onnx`` (file or directory) ONNX Runtime, ``model.xml``
    OpenVINO, ``model.pt`` PyTorch, ``model.pt2`` PyTorch AOTInductor, ``model.py`` the Python
    backend, ``model.netdef`` Caffe2, ``libcustom.so`` the legacy custom backend. Backends
    without a platform name give ``""`` as platform. A missing directory gives None.
    """
    for rule in _FILE_RULES:
        path = version_dir / rule.filename
        if _matches(path, rule.kind):
            return rule.platform, rule.backend
    return None


def _matches(path: Path, kind: str) -> bool:
    if kind == "dir":
        return path.is_dir()
    if kind == "file":
        return path.is_file()
    return path.exists()


def _guess_from_filename(filename: str) -> tuple[str, str] | None:
    for rule in _FILE_RULES:
        if rule.filename == filename:
            return rule.platform, rule.backend
    return None


def fill_platform_backend(
    config: ModelConfig,
    version_dir: Path | None = None,
    *,
    platform_backends: Mapping[str, str] = PLATFORM_BACKENDS,
) -> None:
    """Fill ``platform``, ``backend`` and ``default_model_filename`` in place.

    - Only ``platform`` given: ``backend`` from ``platform_backends``.
    - Only ``backend`` given: ``platform`` from :data:`BACKEND_PLATFORMS` (for ``tensorflow``:
      from ``default_model_filename`` or the files in ``version_dir``).
    - Neither: both from ``default_model_filename`` if set, else from the files in
      ``version_dir`` (the first version directory), when given.
    - ``default_model_filename`` empty: the platform's (or backend's) default file name.

    ``platform_backends`` lets a caller add the platforms its plugins serve. Raises
    :class:`ConfigError` when the pair does not match (Triton: "unexpected 'platform' and
    'backend' pair") or an ensemble names a backend.
    """
    if not config.platform:
        _fill_platform(config, version_dir)
    if not config.backend and config.platform in platform_backends:
        config.backend = platform_backends[config.platform]
    check_platform_backend_pair(config, platform_backends=platform_backends)
    _fill_default_model_filename(config)


def _fill_platform(config: ModelConfig, version_dir: Path | None) -> None:
    backend = config.backend
    if backend and backend != "tensorflow":
        platform = BACKEND_PLATFORMS.get(backend, "")
        if backend == "pytorch" and config.default_model_filename == "model.pt2":
            platform = "torch_aoti"
        config.platform = platform
        return
    guess = _guess_from_filename(config.default_model_filename)
    if guess is None and not config.default_model_filename and version_dir is not None:
        guess = guess_platform_from_files(version_dir)
    if guess is None:
        return
    platform, guessed_backend = guess
    if backend and guessed_backend != backend:
        return
    config.platform = platform
    config.backend = guessed_backend


def check_platform_backend_pair(
    config: ModelConfig, *, platform_backends: Mapping[str, str] = PLATFORM_BACKENDS
) -> None:
    """Raise :class:`ConfigError` unless ``platform`` and ``backend`` go together.

    A backend that some platform maps to (a "known" backend) must come with one of its own
    platforms; an unknown (user-provided) backend goes with any platform, like Triton. An
    ensemble must have an empty backend.
    """
    platform, backend = config.platform, config.backend
    if platform == ENSEMBLE_PLATFORM and backend:
        raise ConfigError(
            f"Ensemble model '{config.name}' must have platform type '{platform}' "
            "and empty backend type"
        )
    known_backends = {b for b in platform_backends.values() if b}
    if backend in known_backends and platform_backends.get(platform) != backend:
        raise ConfigError(
            f"unexpected 'platform' and 'backend' pair, got:{platform}, {backend} "
            f"for model '{config.name}'"
        )


def _fill_default_model_filename(config: ModelConfig) -> None:
    if config.default_model_filename:
        return
    if config.backend == "pytorch" and config.runtime == _PYTHON_RUNTIME:
        return
    filename = DEFAULT_MODEL_FILENAMES.get(config.platform) or BACKEND_DEFAULT_MODEL_FILENAMES.get(
        config.backend
    )
    if filename:
        config.default_model_filename = filename


def default_model_filename(config: ModelConfig) -> str | None:
    """The model file name for ``config``: its own, else its platform's or backend's default."""
    return (
        config.default_model_filename
        or DEFAULT_MODEL_FILENAMES.get(config.platform)
        or BACKEND_DEFAULT_MODEL_FILENAMES.get(config.backend)
    )
