"""The live model registry: which model versions exist, their states, and their lifecycle.

Loading happens off the event loop (config parsing, auto-complete, and each instance's
``load()`` on that instance's own thread). A reload builds the new versions completely before
the old ones stop taking requests; an unload drains in-flight requests before releasing the
instances.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import isolation, remote, repository, watch
from .backend import InferenceBackend, InstanceContext
from .config import (
    ConfigError,
    ModelConfig,
    fill_platform_backend,
    is_ensemble,
    normalize_model_config,
    parse_model_config,
    select_versions,
    validate_model_config,
)
from .ensemble_loader import EnsembleLinker
from .errors import (
    InternalError,
    InvalidArgument,
    ModelLoadError,
    NaiadError,
    NotFound,
    RepositoryPollError,
    Unavailable,
)
from .overrides import (
    check_model_name,
    check_relative_file,
    remove_override_folder,
    write_override_folder,
)
from .plugins import BackendRegistry
from .scheduling import Instance, Scheduler, build_scheduler
from .scheduling.ensemble import EnsembleScheduler
from .signature import Signature
from .stats import ModelStats

log = logging.getLogger(__name__)


class ModelState(str, enum.Enum):
    UNKNOWN = "UNKNOWN"
    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(eq=False)
class ModelVersion:
    """One version of one model, and everything needed to serve it."""

    name: str
    version: int
    state: ModelState = ModelState.LOADING
    reason: str = ""
    config: ModelConfig | None = None
    signature: Signature | None = None
    scheduler: Scheduler | None = None
    instances: list[Instance] = field(default_factory=list)
    stats: ModelStats = field(default_factory=ModelStats)
    #: output name -> labels (for classification)
    labels: dict[str, list[str]] = field(default_factory=dict)
    #: requests resolved to this version and not yet answered (their body may still be being
    #: parsed): an unload lets them in first, as they were received before it
    arriving: int = 0

    @property
    def decoupled(self) -> bool:
        """``model_transaction_policy { decoupled: true }``: 0..N responses per request."""
        return self.config is not None and self.config.model_transaction_policy.decoupled


@dataclass(eq=False)
class _Plan:
    """A model fully prepared off the loop: config settled, instances built and loaded."""

    config: ModelConfig
    versions: dict[int, ModelVersion]


class ModelManager:
    """Owns every model version. All public coroutines run on the event loop."""

    def __init__(
        self,
        repositories: list[Path | str],
        backends: BackendRegistry,
        *,
        auto_complete: bool = True,
        gpu_count: int = 0,
        unload_timeout: float = 30.0,
        load_thread_count: int = 4,
    ) -> None:
        #: local folders, in order; a remote repository's is its cache folder (naiad.remote)
        self.repositories, self.remotes = remote.open_repositories(repositories)
        self.backends = backends
        self.auto_complete = auto_complete
        self.gpu_count = gpu_count
        self.unload_timeout = unload_timeout
        self._versions: dict[str, dict[int, ModelVersion]] = {}
        #: model-level failure (no versions to attach it to), e.g. a config that does not parse
        self._model_errors: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: models being loaded that have no version yet (shown as LOADING)
        self._loading: set[str] = set()
        #: private folders written from load requests' file overrides
        self._override_dirs: dict[str, Path] = {}
        #: POLL mode: model name -> fingerprint of its folder at the last scan
        self._fingerprints: dict[str, int] = {}
        self._load_slots = asyncio.Semaphore(max(load_thread_count, 1))
        #: ensembles: composing models loaded first, then checked against
        self._ensembles = EnsembleLinker(self)
        #: what model code calls back into (BLS, model control, custom metrics); set by the
        #: server, handed to every instance through its InstanceContext
        self.host: Any = None

    # ---- queries (loop thread, no awaits) ----------------------------------------------------

    def resolve(self, name: str, version: int = -1) -> ModelVersion:
        """The version to serve, with Triton's errors for unknown/unready models."""
        versions = self._versions.get(name)
        if not versions:
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        if version < 0:
            ready = [v for v in versions.values() if v.state is ModelState.READY]
            if not ready:
                raise NotFound(f"Request for unknown model: '{name}' has no available versions")
            return max(ready, key=lambda v: v.version)
        mv = versions.get(version)
        if mv is None:
            raise NotFound(f"Request for unknown model: '{name}' version {version} is not found")
        if mv.state is not ModelState.READY:
            raise Unavailable(
                f"Request for unknown model: '{name}' version {version} is not at ready state"
            )
        return mv

    def versions(self, name: str) -> dict[int, ModelVersion]:
        return self._versions.get(name, {})

    def names(self) -> list[str]:
        return sorted(set(self._versions) | set(self._model_errors))

    def all_ready(self) -> bool:
        """Every model known has every version READY (unloaded ones do not count)."""
        if self._model_errors:
            return False
        for versions in self._versions.values():
            for mv in versions.values():
                if mv.state is not ModelState.READY and mv.reason != "unloaded":
                    return False
        return True

    def index(self, ready_only: bool = False) -> list[dict]:
        """Entries of ``/v2/repository/index``."""
        out: list[dict] = []
        names = set(self.names())
        if not ready_only:
            scan = repository.scan_repositories(self.repositories)
            names |= set(scan.models)
        for name in sorted(names):
            versions = self._versions.get(name, {})
            if not versions:
                if ready_only:
                    continue
                entry: dict = {"name": name}
                if name in self._loading:
                    entry["state"] = "LOADING"
                elif name in self._model_errors:
                    entry.update(state="UNAVAILABLE", reason=self._model_errors[name])
                out.append(entry)
                continue
            for v in sorted(versions):
                mv = versions[v]
                if ready_only and mv.state is not ModelState.READY:
                    continue
                entry = {"name": name, "version": str(v), "state": mv.state.value}
                if mv.reason:
                    entry["reason"] = mv.reason
                out.append(entry)
        return out

    # ---- lifecycle -----------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    async def load_all(self, names: list[str] | None = None) -> None:
        """Load every model of the repositories (or ``names``), concurrently."""
        if names is None:
            self._fingerprints = await asyncio.to_thread(self._snapshot)
            scan = await asyncio.to_thread(repository.scan_repositories, self.repositories)
            for dup in scan.duplicates:
                self._model_errors[dup] = "model appears in two or more repositories"
            names = sorted(n for n in scan.models if n not in scan.duplicates)
        elif self.remotes:
            await asyncio.to_thread(self.remotes.refresh)
        await asyncio.gather(*(self.load(n, quiet=True) for n in names))

    def _snapshot(self) -> dict[str, int]:
        """POLL fingerprints (worker thread): a remote model's come from its objects' listing."""
        remote_prints = self.remotes.refresh() if self.remotes else {}
        local = watch.snapshot(self.repositories)
        return {name: remote_prints.get(name, value) for name, value in local.items()}

    async def load(
        self,
        name: str,
        config_override: ModelConfig | None = None,
        *,
        quiet: bool = False,
        files: dict[str, bytes] | None = None,
    ) -> None:
        """Load or reload ``name``. On failure a model that was serving keeps serving; the error
        is raised (or only recorded, with ``quiet``).

        ``files`` (path -> bytes) is a whole model folder sent with the request; it is written to
        a private temporary folder and ``config_override`` is then mandatory.
        """
        check_model_name(name)
        source_path = None
        if files:
            if config_override is None:
                raise InvalidArgument(
                    f"failed to load '{name}': a config override must be provided with file "
                    "overrides"
                )
            source_path = await asyncio.to_thread(write_override_folder, name, files)
        async with self._lock(name):
            old = self._versions.get(name, {})
            if not old:
                self._loading.add(name)
            try:
                async with self._load_slots:
                    plan = await asyncio.to_thread(
                        self._prepare, name, config_override, source_path
                    )
                if is_ensemble(plan.config):
                    await self._ensembles.link(name, plan.config, plan.versions)
            except NaiadError as exc:
                self._loading.discard(name)
                if source_path is not None:
                    remove_override_folder(source_path)
                found = not isinstance(exc, RepositoryPollError)
                self._record_failure(name, exc.message, old, found)
                if quiet:
                    return
                error = ModelLoadError(f"failed to load '{name}', {exc.message}")
                error.code = exc.code
                raise error from exc
            except Exception as exc:  # a backend bug must not escape as a crash
                self._loading.discard(name)
                if source_path is not None:
                    remove_override_folder(source_path)
                log.exception("unexpected error loading model '%s'", name)
                self._record_failure(name, f"{type(exc).__name__}: {exc}", old)
                if quiet:
                    return
                raise InternalError(f"failed to load '{name}', {exc}") from exc
            self._loading.discard(name)
            self._model_errors.pop(name, None)
            previous_override = self._override_dirs.pop(name, None)
            if source_path is not None:
                self._override_dirs[name] = source_path
            # new versions are ready before the old ones stop taking requests
            merged = dict(plan.versions)
            retiring = [mv for v, mv in old.items() if mv.state is ModelState.READY]
            for mv in old.values():
                if mv.version not in merged and mv.state is not ModelState.READY:
                    merged[mv.version] = mv  # keep history (unloaded/unavailable) for the index
            self._versions[name] = merged
            for mv in plan.versions.values():
                log.info("model '%s' version %d is READY", name, mv.version)
            await self._retire(retiring, merged)
            if previous_override is not None:
                remove_override_folder(previous_override)

    async def unload(self, name: str, unload_dependents: bool = False) -> None:
        """Stop serving every version of ``name``; in-flight requests finish first (bounded).

        With ``unload_dependents`` the loaded ensembles that use ``name`` are unloaded too.
        Unloading a name nobody knows is a no-op, as in Triton.
        """
        if unload_dependents:
            for dependent in self.dependents(name):
                await self.unload(dependent, unload_dependents=True)
        async with self._lock(name):
            versions = self._versions.get(name, {})
            live = [mv for mv in versions.values() if mv.state is ModelState.READY]
            for mv in live:
                mv.state = ModelState.UNLOADING
            await self._retire(live, {})
            self._model_errors.pop(name, None)
            override = self._override_dirs.pop(name, None)
            if override is not None:
                remove_override_folder(override)

    def dependents(self, name: str) -> list[str]:
        """Loaded ensembles with a step that calls ``name``."""
        found = []
        for other, versions in self._versions.items():
            for mv in versions.values():
                if (
                    mv.state is ModelState.READY
                    and mv.config is not None
                    and any(step.model_name == name for step in mv.config.ensemble_scheduling.step)
                ):
                    found.append(other)
                    break
        return found

    async def poll(self) -> watch.Changes:
        """POLL mode: apply what changed on disk since the last scan (added models load,
        removed ones unload, changed ones reload; a failed reload keeps the old one serving)."""
        current = await asyncio.to_thread(self._snapshot)
        changes = watch.diff(self._fingerprints, current)
        self._fingerprints = current
        if changes:
            log.info(
                "repository changes: added %s, removed %s, changed %s",
                changes.added,
                changes.removed,
                changes.changed,
            )
        await asyncio.gather(
            *(self.load(n, quiet=True) for n in changes.added + changes.changed),
            *(self.unload(n) for n in changes.removed),
        )
        return changes

    async def unload_all(self) -> None:
        await asyncio.gather(*(self.unload(n) for n in list(self._versions)))

    async def _retire(self, old: list[ModelVersion], current: dict[int, ModelVersion]) -> None:
        """Drain and release ``old`` versions that ``current`` does not hold any more."""
        for mv in old:
            if current.get(mv.version) is mv:
                continue
            mv.state = ModelState.UNLOADING
            deadline = time.monotonic() + self.unload_timeout
            while mv.arriving and time.monotonic() < deadline:
                await asyncio.sleep(0.005)  # requests received before the unload, being parsed
            if mv.scheduler is not None:
                await mv.scheduler.drain(max(0.0, deadline - time.monotonic()))
            await asyncio.gather(*(i.executor.run(i.unload) for i in mv.instances))
            mv.state = ModelState.UNAVAILABLE
            mv.reason = "unloaded"
            if mv.version not in current:
                current[mv.version] = mv
            log.info("model '%s' version %d unloaded", mv.name, mv.version)

    def _record_failure(
        self, name: str, reason: str, old: dict[int, ModelVersion], found: bool = True
    ) -> None:
        log.error("failed to load model '%s': %s", name, reason)
        if any(mv.state is ModelState.READY for mv in old.values()):
            return  # the old version keeps serving; the error goes back to the caller
        if not found and not old:
            return  # a name no repository has: the index does not learn it (as in Triton)
        self._model_errors[name] = reason
        self._versions.pop(name, None)

    # ---- preparation (worker thread) -----------------------------------------------------------

    def _prepare(self, name: str, override: ModelConfig | None, source_path: Path | None) -> _Plan:
        remote_errors: dict[Path, str] = {}  # remote repositories that could not be listed
        found: repository.ModelSource | None
        if source_path is not None:
            found = repository.ModelSource(name, source_path, source_path.parent)
        else:
            remote_errors = self.remotes.fetch(name) if self.remotes else {}
            found = repository.find_model(self.repositories, name)
        if found is None or found.repository in remote_errors:  # never a stale cache
            if remote_errors:
                raise ModelLoadError("; ".join(remote_errors.values()))
            raise RepositoryPollError()
        source = found
        if remote_errors:
            log.warning("model '%s' loads from %s; %s", name, source.repository, remote_errors)
        config = self._read_config(source, override)
        _check_file_fields(config)
        available = repository.version_numbers(source.path)
        if not available:
            raise ModelLoadError(f"at least one version must be available under {source.path}")
        fill_platform_backend(config, source.path / str(available[-1]))
        if is_ensemble(config):
            return self._prepare_ensemble(config, source, available)
        backend_cls = self.backends.find(config.platform, config.backend)
        normalize_model_config(
            config,
            model_name=name,
            default_instance_count=backend_cls.default_instance_count,
            gpu_count=self.gpu_count,
        )
        selected = select_versions(config.version_policy, available)
        if not selected:
            raise ModelLoadError(f"no version is available for model '{name}'")
        mode = isolation.isolation_mode(config, backend_cls, source.path / str(selected[-1]))
        env = isolation.execution_env(config, source.path, mode)
        if self.auto_complete:
            isolation.auto_complete(backend_cls, mode, config, source.path / str(selected[-1]), env)
            normalize_model_config(
                config,
                model_name=name,
                default_instance_count=backend_cls.default_instance_count,
                gpu_count=self.gpu_count,
            )
        validate_model_config(config)
        signature = Signature.from_config(config)
        labels = {
            out.name: repository.read_labels(source.path, out.label_filename)
            for out in config.output
            if out.label_filename
        }
        versions: dict[int, ModelVersion] = {}
        try:
            for v in selected:
                versions[v] = self._build_version(
                    backend_cls, config, source, v, signature, labels, mode, env
                )
        except BaseException:
            for mv in versions.values():
                for inst in mv.instances:
                    inst.release()
            raise
        return _Plan(config, versions)

    def _prepare_ensemble(
        self, config: ModelConfig, source: repository.ModelSource, available: list[int]
    ) -> _Plan:
        """An ensemble: no backend and no instances, an :class:`EnsembleScheduler` per version.
        The checks against the composing models follow on the loop (:class:`EnsembleLinker`)."""
        normalize_model_config(config, model_name=source.name, gpu_count=self.gpu_count)
        selected = select_versions(config.version_policy, available)
        if not selected:
            raise ModelLoadError(f"no version is available for model '{source.name}'")
        validate_model_config(config)
        signature = Signature.from_config(config)
        versions = {v: self._build_ensemble_version(config, source, v, signature) for v in selected}
        return _Plan(config, versions)

    def _build_ensemble_version(
        self,
        config: ModelConfig,
        source: repository.ModelSource,
        version: int,
        signature: Signature,
    ) -> ModelVersion:
        mv = ModelVersion(source.name, version, ModelState.READY, "", config, signature)
        mv.labels = {
            out.name: repository.read_labels(source.path, out.label_filename)
            for out in config.output
            if out.label_filename
        }
        mv.scheduler = EnsembleScheduler(config, self, mv.stats, signature)
        return mv

    def _read_config(
        self, source: repository.ModelSource, override: ModelConfig | None
    ) -> ModelConfig:
        if override is not None:
            config = ModelConfig()
            config.CopyFrom(override)
            return config
        text = repository.read_config_text(source)
        if text is None:
            if not self.auto_complete:
                raise ConfigError(
                    f"failed to read model configuration {source.config_path}: file not found "
                    "(auto-complete is disabled)"
                )
            return ModelConfig()
        return parse_model_config(text, model_name=source.name)

    def _build_version(
        self,
        backend_cls: type[InferenceBackend],
        config: ModelConfig,
        source: repository.ModelSource,
        version: int,
        signature: Signature,
        labels: dict[str, list[str]],
        mode: str = "thread",
        env: dict[str, str] | None = None,
    ) -> ModelVersion:
        version_path = source.path / str(version)
        contexts: list[InstanceContext] = []
        for group in config.instance_group:
            kind = type(group).Kind.Name(group.kind)
            devices = list(group.gpus) if kind == "KIND_GPU" else [-1]
            for device in devices:
                for _ in range(group.count):
                    name = f"{group.name}_{len(contexts)}"
                    contexts.append(InstanceContext(name, kind, device, self.host))
        instances = [
            Instance(
                isolation.make_backend(
                    backend_cls, mode, config, source.path, version_path, ctx, env
                ),
                signature,
            )
            for ctx in contexts
        ]
        # load every instance on its own thread, concurrently
        futures = [inst.executor.submit(inst.load) for inst in instances]
        errors: list[Exception] = []
        loaded: list[Instance] = []
        for inst, fut in zip(instances, futures, strict=True):
            try:
                fut.result()
                loaded.append(inst)
            except Exception as exc:
                errors.append(exc)
                if mode == "process":  # its child started: stop it (unload ends the process)
                    inst.release()
                else:
                    inst.executor.shutdown(wait=False)
        if errors:
            for inst in loaded:  # the instances that did load are released (their unload runs)
                inst.release()
            first = errors[0]
            if isinstance(first, NaiadError):
                raise first
            raise ModelLoadError(f"version {version}: {type(first).__name__}: {first}") from first
        mv = ModelVersion(source.name, version, ModelState.READY, "", config, signature)
        mv.instances = instances
        mv.labels = labels
        try:
            mv.scheduler = build_scheduler(config, instances, mv.stats, signature)
        except BaseException:
            for inst in instances:  # loaded but never served: release them
                inst.release()
            raise
        return mv


def _check_file_fields(config: ModelConfig) -> None:
    """A config (from disk or from a load request) names files only inside the model folder."""
    if config.default_model_filename:
        check_relative_file(config.default_model_filename, "default_model_filename")
    for filename in config.cc_model_filenames.values():
        check_relative_file(filename, "cc_model_filenames entry")
    for out in config.output:
        if out.label_filename:
            check_relative_file(out.label_filename, "label_filename")
