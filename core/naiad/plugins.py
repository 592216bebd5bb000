"""Plugin discovery and the backend registry.

Discovery order is fixed: naiad's built-in plugins, then every ``naiad.backends`` entry point
(sorted by name so the order never depends on installation order), then modules named with
``--plugin``. Each plugin is checked against the hook specs when it is registered: a
``@naiad.hookimpl`` whose name no spec has (a misspelling) or whose arguments the spec does not
offer is a :class:`PluginError` naming the plugin, never silently ignored. Each plugin's
``naiad_register_backends`` hook puts backend classes into a :class:`BackendRegistry`; after
start-up the registry alone is consulted, never pluggy.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType
from typing import TYPE_CHECKING

import pluggy

from . import hookspecs
from .backend import InferenceBackend
from .errors import ModelLoadError

if TYPE_CHECKING:
    from .http.edge import HttpHooks

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "naiad.backends"
#: naiad's own plugins, registered first through the same hook a third party uses:
#: ``python`` (and platform ``custom``), a CustomInstance in the version folder's ``model.py``
BUILTIN_PLUGINS: tuple[str, ...] = ("naiad.python_backend",)


@dataclass(frozen=True, slots=True)
class BackendEntry:
    cls: type[InferenceBackend]
    #: where it came from: "builtin", "<distribution> <version> (entry point <name>)", "--plugin"
    source: str


class PluginError(Exception):
    """A plugin does not fit the hook specs (unknown hook name, wrong arguments)."""


class BackendRegistry:
    """Backend classes by Triton backend name and by platform name."""

    def __init__(self) -> None:
        self._by_backend: dict[str, BackendEntry] = {}
        self._by_platform: dict[str, BackendEntry] = {}
        self._current_source = "unknown"

    def _collect(self, source: str, hook: Callable[..., object]) -> None:
        """Run one plugin's ``naiad_register_backends``, recording ``source`` on what it adds."""
        self._current_source = source
        try:
            hook(registry=self)
        finally:
            self._current_source = "unknown"

    def register(self, cls: type[InferenceBackend]) -> None:
        """Make ``cls`` serve configs whose ``backend`` is ``cls.name`` or whose ``platform`` is
        one of ``cls.platforms``. A later registration of a name replaces an earlier one."""
        if not (isinstance(cls, type) and issubclass(cls, InferenceBackend)):
            raise TypeError(f"{cls!r} is not a subclass of naiad.InferenceBackend")
        if not cls.name:
            raise TypeError(f"backend class {cls.__qualname__} must set a 'name'")
        entry = BackendEntry(cls, self._current_source)
        self._by_backend[cls.name] = entry
        for platform in cls.platforms:
            self._by_platform[platform] = entry

    def find(self, platform: str, backend: str) -> type[InferenceBackend]:
        """The class for a config's ``platform`` / ``backend``; backend wins when both are set."""
        entry = self._by_backend.get(backend) if backend else None
        if entry is None and platform:
            entry = self._by_platform.get(platform)
        if entry is None:
            wanted = f"backend '{backend}'" if backend else f"platform '{platform}'"
            hint = _INSTALL_HINTS.get(backend) or _INSTALL_HINTS.get(platform, "")
            raise ModelLoadError(
                f"no installed naiad plugin provides {wanted}{hint}; installed backends: "
                f"{', '.join(sorted(self._by_backend)) or 'none'}"
            )
        return entry.cls

    def has_backend(self, name: str) -> bool:
        return name in self._by_backend

    def entries(self) -> list[tuple[str, tuple[str, ...], str]]:
        """(backend name, platforms, source) for each registered backend, sorted by name."""
        return [
            (name, entry.cls.platforms, entry.source)
            for name, entry in sorted(self._by_backend.items())
        ]


_INSTALL_HINTS = {
    "onnxruntime": " (pip install naiad-backend-onnx)",
    "onnxruntime_onnx": " (pip install naiad-backend-onnx)",
    "pytorch": " (pip install naiad-backend-pytorch)",
    "pytorch_libtorch": " (pip install naiad-backend-pytorch)",
    "tensorflow": " (pip install naiad-backend-tensorflow)",
    "tensorflow_savedmodel": " (pip install naiad-backend-tensorflow)",
    "tensorflow_graphdef": " (pip install naiad-backend-tensorflow)",
    "tensorrt": " (pip install naiad-backend-tensorrt)",
    "tensorrt_plan": " (pip install naiad-backend-tensorrt)",
    "caffe2_netdef": " (pip install naiad-backend-caffe2)",
    "image_preprocess": " (pip install naiad-custom-example)",
}


def make_plugin_manager(
    extra_plugins: Iterable[str | ModuleType | object] = (), *, entry_points_enabled: bool = True
) -> tuple[pluggy.PluginManager, list[tuple[object, str]]]:
    """A fresh plugin manager with every plugin registered, and (plugin, source) in order."""
    pm = pluggy.PluginManager("naiad")
    pm.add_hookspecs(hookspecs)
    ordered: list[tuple[object, str]] = []
    for name in BUILTIN_PLUGINS:
        ordered.append((importlib.import_module(name), "builtin"))
    if entry_points_enabled:
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist
            where = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
            try:
                ordered.append((ep.load(), f"{where} (entry point '{ep.name}')"))
            except Exception as exc:  # a broken plugin must not take the server down
                log.error("could not load naiad plugin %r from %s: %s", ep.name, where, exc)
    for plugin in extra_plugins:
        if isinstance(plugin, str):
            ordered.append((importlib.import_module(plugin), f"--plugin {plugin}"))
        else:
            ordered.append((plugin, "in-process"))
    for plugin, source in ordered:
        if pm.is_registered(plugin):
            continue
        try:
            pm.register(plugin)
        except pluggy.PluginValidationError as exc:
            why = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise PluginError(f"naiad plugin {_name(plugin)} from {source}: {why}") from None
        unknown = [
            impl.function.__name__
            for caller in pm.get_hookcallers(plugin) or ()
            if not caller.has_spec()
            for impl in caller.get_hookimpls()
            if impl.plugin is plugin
        ]
        if unknown:
            known = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith("naiad_")))
            raise PluginError(
                f"naiad plugin {_name(plugin)} from {source} implements {sorted(unknown)}, which "
                f"naiad has no hook spec for (misspelled?); naiad's hooks: {known}"
            )
    return pm, ordered


def _name(plugin: object) -> str:
    return repr(getattr(plugin, "__name__", None) or type(plugin).__name__)


def build_backend_registry(
    extra_plugins: Iterable[str | ModuleType | object] = (),
    *,
    entry_points_enabled: bool = True,
    http_hooks: HttpHooks | None = None,
) -> BackendRegistry:
    """Discover plugins and collect their backends, one plugin at a time so each backend records
    where it came from; with ``http_hooks``, their HTTP hooks too (in discovery order)."""
    pm, ordered = make_plugin_manager(extra_plugins, entry_points_enabled=entry_points_enabled)
    if http_hooks is not None:
        http = {id(i.plugin): i.function for i in pm.hook.naiad_register_http_hooks.get_hookimpls()}
        for plugin, _ in ordered:
            register = http.pop(id(plugin), None)
            if register is not None:
                register(hooks=http_hooks)
    registry = BackendRegistry()
    # the hook implementations pluggy validated, run one plugin at a time in discovery order (a
    # later registration of a name replaces an earlier one); pluggy itself would call them LIFO
    impls = {id(i.plugin): i.function for i in pm.hook.naiad_register_backends.get_hookimpls()}
    for plugin, source in ordered:
        hook = impls.pop(id(plugin), None)
        if hook is not None:
            registry._collect(source, hook)
    return registry
