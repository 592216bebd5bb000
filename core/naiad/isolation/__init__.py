"""Model instances in processes of their own (config parameter ``instance_isolation``).

``instance_isolation: "process"`` runs each instance of any backend in a child process: a crash
there (a segfault, ``os._exit``, the OOM killer) fails only that instance's in-flight requests;
the instance is restarted, and the server and every other model keep serving. ``"thread"`` keeps
the instances in the server process on threads of their own (no IPC: the fast path). The default
is the backend's (:meth:`naiad.InferenceBackend.default_isolation`): process for Triton python
models, as in Triton, thread for everything else. See ``docs/python-backend.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MethodType

from ..backend import InferenceBackend, InstanceContext
from ..config import ModelConfig
from ..errors import ModelLoadError

PARAMETER = "instance_isolation"
MODES = ("process", "thread")


def isolation_mode(
    config: ModelConfig, backend_cls: type[InferenceBackend], version_path: Path
) -> str:
    """``"process"`` or ``"thread"`` for this model (parameter first, then the backend's)."""
    if PARAMETER in config.parameters:
        value = config.parameters[PARAMETER].string_value.strip().lower()
        if value not in MODES:
            raise ModelLoadError(
                f"parameter '{PARAMETER}' of model '{config.name}' must be 'process' or "
                f"'thread', not '{value}'"
            )
        return value
    return backend_cls.default_isolation(config, version_path)


def make_backend(
    backend_cls: type[InferenceBackend],
    mode: str,
    config: ModelConfig,
    model_path: Path,
    version_path: Path,
    ctx: InstanceContext,
    env: Mapping[str, str] | None = None,
) -> InferenceBackend:
    """One instance's backend object: the class itself, or its process wrapper."""
    if mode != "process":
        return backend_cls(config, model_path, version_path, ctx)
    from .backends import make_isolated

    return make_isolated(backend_cls, config, model_path, version_path, ctx, env)


def auto_complete(
    backend_cls: type[InferenceBackend],
    mode: str,
    config: ModelConfig,
    version_path: Path,
    env: Mapping[str, str] | None = None,
) -> None:
    """The backend's auto-complete; in a throw-away process for process-isolated models."""
    if mode != "process" or _is_base(backend_cls):
        backend_cls.auto_complete_config(config, version_path)
        return
    from .spawn import run_auto_complete

    run_auto_complete(backend_cls, config, version_path, env)


def _is_base(backend_cls: type[InferenceBackend]) -> bool:
    """The class does not override auto-complete: no need for a process."""
    method, base = backend_cls.auto_complete_config, InferenceBackend.auto_complete_config
    return (
        isinstance(method, MethodType)
        and isinstance(base, MethodType)
        and method.__func__ is base.__func__
    )


#: Triton's python-backend parameter naming the Python environment of a model
EXECUTION_ENV_PATH = "EXECUTION_ENV_PATH"


def execution_env(config: ModelConfig, model_path: Path, mode: str) -> dict[str, str] | None:
    """The environment variables of a model's processes (``EXECUTION_ENV_PATH``), or None.

    Honoured as an unpacked environment folder whose ``site-packages`` join the child's import
    path (same Python version as the server, as Triton requires). A conda-pack archive is
    refused with the reason, and so is the parameter on a model whose instances run in-process.
    """
    if EXECUTION_ENV_PATH not in config.parameters:
        return None
    raw = config.parameters[EXECUTION_ENV_PATH].string_value
    path = Path(raw.replace("$$TRITON_MODEL_DIRECTORY", str(model_path)))
    if mode != "process":
        raise ModelLoadError(
            f"model '{config.name}': {EXECUTION_ENV_PATH} needs instances in processes of "
            f"their own (parameter '{PARAMETER}' \"process\")"
        )
    if path.suffix == ".gz" or path.is_file():
        raise ModelLoadError(
            f"model '{config.name}': {EXECUTION_ENV_PATH} '{path}' is an archive; naiad does "
            "not unpack conda-pack archives: unpack it and name the folder"
        )
    if not (path / "bin" / "activate").is_file():
        raise ModelLoadError(
            f"Path {path}/bin/activate does not exist. The Python environment should contain "
            "an 'activate' script."
        )
    import os
    import sys

    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = path / "lib" / version / "site-packages"
    if not site.is_dir():
        raise ModelLoadError(
            f"model '{config.name}': {EXECUTION_ENV_PATH} '{path}' has no {site.relative_to(path)}"
            f" (naiad runs the model with the server's {version})"
        )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env["VIRTUAL_ENV"] = str(path)
    env["PATH"] = os.pathsep.join([str(path / "bin"), env.get("PATH", "")])
    return env
