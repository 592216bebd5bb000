"""Built-in plugin: a custom backend written in a ``model.py`` inside the model's version folder.

Triton loads a custom backend from the model folder (TRTIS 1.x: ``libcustom.so`` for platform
``custom``; 2.x: ``model.py`` for backend ``python``). naiad does the same with Python code::

    my_model/
      config.pbtxt          backend: "python"   (or platform: "custom")
      1/model.py            class MyModel(naiad.CustomInstance): ...

``model.py`` is told apart by the class it defines: ``class TritonPythonModel`` is a model
written for Triton's python backend (``import triton_python_backend_utils as pb_utils``), run
unchanged by :mod:`naiad.tritonpy`; otherwise it must define exactly one subclass of
:class:`naiad.CustomInstance` (or name the class with the config parameter ``custom_class`` when
it defines several). Each instance executes the
file afresh, on its own worker thread, as Triton runs each Python-backend instance in a process of
its own: module-level state is per instance. The class's ``auto_complete_config`` is honoured.

**This runs code from the model repository with the server's privileges**, exactly as Triton's
Python backend does: whoever can write to the repository (or send a load request carrying files,
in EXPLICIT mode) can run code in the server. Serve repositories you trust.

This module is a plugin like any other (listed in :data:`naiad.plugins.BUILTIN_PLUGINS`); a
third-party plugin registering backend ``python`` replaces it.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import naiad
from naiad.backend import CustomInstance, InstanceContext
from naiad.config import ModelConfig
from naiad.errors import ModelLoadError
from naiad.inference import InferRequest, InferResponse
from naiad.tritonpy.runner import TritonRunner, add_import_paths
from naiad.tritonpy.runner import auto_complete as tritonpy_auto_complete

if TYPE_CHECKING:
    from naiad.plugins import BackendRegistry

__all__ = ["PythonFileBackend", "load_model_module", "naiad_register_backends"]

#: config parameter that picks the class when ``model.py`` defines several
CLASS_PARAMETER = "custom_class"
_LEGACY_LIBRARY = ".so"
TRITON_CLASS = "TritonPythonModel"
_TRITON_CLASS_RE = re.compile(rf"^class\s+{TRITON_CLASS}\b", re.MULTILINE)


class PythonFileBackend(CustomInstance):
    """Runs the :class:`~naiad.CustomInstance` subclass defined in the version folder's file.

    The user's object does the work; this wrapper only finds, imports and forwards to it.
    """

    name = "python"
    platforms = ("custom",)
    default_model_filename = "model.py"

    def __init__(
        self, config: ModelConfig, model_path: Path, version_path: Path, instance: InstanceContext
    ) -> None:
        super().__init__(config, model_path, version_path, instance)
        self._module: ModuleType | None = None
        self._model: CustomInstance | None = None
        self._triton: TritonRunner | None = None

    @classmethod
    def auto_complete_config(cls, config: ModelConfig, version_path: Path) -> None:
        """Let the user's class complete the config (its own ``auto_complete_config``)."""
        path = model_py_path(config, version_path)
        triton = defines_triton_model(path)
        if triton:
            add_import_paths(path.parent)
        module = load_model_module(path, f"{config.name}_autocomplete")
        try:
            if triton:
                tritonpy_auto_complete(getattr(module, TRITON_CLASS), config)
            else:
                find_model_class(module, config, path).auto_complete_config(config, version_path)
        finally:
            sys.modules.pop(module.__name__, None)

    @classmethod
    def default_isolation(cls, config: ModelConfig, version_path: Path) -> str:
        """Triton python models run in processes of their own, as in Triton."""
        try:
            path = model_py_path(config, version_path)
        except ModelLoadError:
            return "thread"
        return "process" if defines_triton_model(path) else "thread"

    def initialize(self) -> None:
        path = model_py_path(self.config, self.version_path)
        triton = defines_triton_model(path)
        if triton:
            add_import_paths(path.parent)
        # unique while this instance lives, across versions and reloads of the same model
        tag = f"{self.config.name}_v{self.version_path.name}_{self.instance.name}_{id(self):x}"
        module = load_model_module(path, tag)
        self._module = module
        if triton:
            model_class = getattr(module, TRITON_CLASS, None)
            if model_class is None:
                raise ModelLoadError(f"'{path}' does not define class {TRITON_CLASS}")
            runner = TritonRunner(
                model_class,
                self.config,
                self.model_path,
                self.version_path,
                self.instance,
                self.instance.host,
            )
            runner.initialize()
            self._triton = runner
            return
        cls = find_model_class(module, self.config, path)
        self._model = cls(self.config, self.model_path, self.version_path, self.instance)
        self._model.load()

    def execute_requests(self, requests: Sequence[InferRequest]) -> list[InferResponse | Exception]:
        if self._triton is not None:
            return self._triton.execute_requests(requests)
        if self._model is None:
            raise ModelLoadError(f"model '{self.config.name}' is not initialized")
        return self._model.execute_requests(requests)

    def readiness_check(self) -> Callable[[], None] | None:
        """A Triton model's ``is_ready()``, when it defines one."""
        triton = self._triton
        return triton.check_ready if triton is not None and triton.has_is_ready() else None

    def finalize(self) -> None:
        try:
            if self._triton is not None:
                self._triton.finalize()
            if self._model is not None:
                self._model.unload()
        finally:
            self._triton = None
            self._model = None
            if self._module is not None:
                sys.modules.pop(self._module.__name__, None)
                self._module = None


def defines_triton_model(path: Path) -> bool:
    """The file defines ``class TritonPythonModel`` (read, not executed)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return _TRITON_CLASS_RE.search(text) is not None


def model_py_path(config: ModelConfig, version_path: Path) -> Path:
    """The Python file to load: ``default_model_filename`` when it names a ``.py`` file, else
    ``model.py``. A legacy shared library (``libcustom.so``) is refused with a clear message."""
    filename = config.default_model_filename or "model.py"
    if filename.endswith(_LEGACY_LIBRARY):
        candidate = Path(version_path) / "model.py"
        if candidate.is_file():
            return candidate
        raise ModelLoadError(
            f"model '{config.name}' names the shared library '{filename}': naiad does not load "
            "TRTIS C custom backends; put a model.py defining a naiad.CustomInstance subclass in "
            f'the version folder, or install a plugin and set backend: "<its name>"'
        )
    path = Path(version_path) / filename
    if path.is_dir():
        path = path / "model.py"
    if not path.is_file():
        raise ModelLoadError(f"unable to find '{path}' for model '{config.name}'")
    return path


def load_model_module(path: Path, tag: str) -> ModuleType:
    """Execute ``path`` as a fresh module (registered in ``sys.modules`` under a unique name, so
    dataclasses, pickling and relative lookups work; the caller removes it when done)."""
    module_name = "naiad_model_py_" + re.sub(r"\W", "_", tag)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import '{path}'")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ModelLoadError(f"error executing '{path}': {type(exc).__name__}: {exc}") from exc
    return module


def find_model_class(module: ModuleType, config: ModelConfig, path: Path) -> type[CustomInstance]:
    """The CustomInstance subclass ``module`` defines (``custom_class`` picks among several)."""
    wanted = (
        config.parameters[CLASS_PARAMETER].string_value
        if CLASS_PARAMETER in config.parameters
        else ""
    )
    classes = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, CustomInstance)
        and obj.__module__ == module.__name__
    ]
    if wanted:
        chosen = [c for c in classes if c.__name__ == wanted]
        if not chosen:
            raise ModelLoadError(
                f"'{path}' defines no naiad.CustomInstance subclass named '{wanted}' (parameter "
                f"'{CLASS_PARAMETER}' of model '{config.name}')"
            )
        return chosen[0]
    if len(classes) != 1:
        found = ", ".join(sorted(c.__name__ for c in classes)) or "none"
        raise ModelLoadError(
            f"'{path}' must define exactly one naiad.CustomInstance subclass (found: {found}); "
            f"name one with the parameter '{CLASS_PARAMETER}' of model '{config.name}'"
        )
    return classes[0]


@naiad.hookimpl
def naiad_register_backends(registry: BackendRegistry) -> None:
    """Backend ``python`` and platform ``custom``: a ``model.py`` in the version folder."""
    registry.register(PythonFileBackend)
