"""The model lifecycle, composed in one place: load, reload, unload, POLL.

:class:`ModelManager` wires together the objects that each do one job and keeps the API the data
plane, the server and model code use:

- :class:`~naiad.registry.ModelRegistry`: the live versions, their states; queries, load before
  unload, draining (event loop);
- :class:`~naiad.model_loader.ModelLoader`: repository look-up and remote fetch, the config
  pipeline, building each version (worker thread);
- :class:`~naiad.instance_factory.InstanceFactory`: instances from ``instance_group``, loaded and
  released each on its own thread;
- :class:`~naiad.poller.RepositoryPoller`: POLL-mode fingerprints and the changes they call for;
- :class:`~naiad.overrides.OverrideFolders`: folders written from load requests' files;
- :class:`~naiad.ensemble_loader.EnsembleLinker`: an ensemble's composing models, loaded first.

A reload builds the new versions completely before the old ones stop taking requests; an unload
drains in-flight requests before releasing the instances.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from . import remote, repository, watch
from .config import ModelConfig, is_ensemble
from .ensemble_loader import EnsembleLinker
from .errors import (
    InternalError,
    InvalidArgument,
    ModelLoadError,
    NaiadError,
    RepositoryPollError,
)
from .instance_factory import InstanceFactory
from .model_loader import LoadPlan, ModelLoader
from .overrides import (
    OverrideFolders,
    check_model_name,
    remove_override_folder,
    write_override_folder,
)
from .plugins import BackendRegistry
from .poller import RepositoryPoller
from .registry import ModelRegistry, ModelState, ModelVersion

log = logging.getLogger(__name__)

__all__ = ["ModelManager", "ModelState", "ModelVersion"]


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
        self.registry = ModelRegistry(unload_timeout=unload_timeout)
        self.instances = InstanceFactory()
        self.loader = ModelLoader(
            self.repositories,
            self.remotes,
            backends,
            self.instances,
            self.registry,
            auto_complete=auto_complete,
            gpu_count=gpu_count,
        )
        self.poller = RepositoryPoller(
            self.repositories, self.remotes, self._load_quietly, self.unload
        )
        self._overrides = OverrideFolders()
        self._load_slots = asyncio.Semaphore(max(load_thread_count, 1))
        #: ensembles: composing models loaded first, then checked against
        self._ensembles = EnsembleLinker(self)

    @property
    def host(self) -> Any:
        """What model code calls back into (BLS, model control, custom metrics); set by the
        server, handed to every instance through its InstanceContext."""
        return self.instances.host

    @host.setter
    def host(self, value: Any) -> None:
        self.instances.host = value

    # ---- queries (loop thread, no awaits) ----------------------------------------------------

    def resolve(self, name: str, version: int = -1) -> ModelVersion:
        """The version to serve, with Triton's errors for unknown/unready models."""
        return self.registry.resolve(name, version)

    def versions(self, name: str) -> dict[int, ModelVersion]:
        return self.registry.versions(name)

    def names(self) -> list[str]:
        return self.registry.names()

    def all_ready(self) -> bool:
        """Every model known has every version READY (unloaded ones do not count)."""
        return self.registry.all_ready()

    def index(self, ready_only: bool = False) -> list[dict]:
        """Entries of ``/v2/repository/index`` (the repositories' unloaded models included)."""
        on_disk: list[str] = []
        if not ready_only:
            on_disk = list(repository.scan_repositories(self.repositories).models)
        return self.registry.index(ready_only, on_disk)

    def dependents(self, name: str) -> list[str]:
        """Loaded ensembles with a step that calls ``name``."""
        return self.registry.dependents(name)

    # ---- lifecycle -----------------------------------------------------------------------------

    async def load_all(self, names: list[str] | None = None) -> None:
        """Load every model of the repositories (or ``names``), concurrently."""
        if names is None:
            scan = await self.poller.start()
            for dup in scan.duplicates:
                self.registry.record_error(dup, "model appears in two or more repositories")
            names = sorted(n for n in scan.models if n not in scan.duplicates)
        elif self.remotes:
            await asyncio.to_thread(self.remotes.refresh)
        await asyncio.gather(*(self.load(n, quiet=True) for n in names))

    async def _load_quietly(self, name: str) -> None:
        await self.load(name, quiet=True)

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
        async with self.registry.lock(name):
            old = self.registry.begin_load(name)
            try:
                plan = await self._plan(name, config_override, source_path)
            except NaiadError as exc:
                if source_path is not None:
                    remove_override_folder(source_path)
                found = not isinstance(exc, RepositoryPollError)
                self.registry.fail_load(name, exc.message, old, found)
                if quiet:
                    return
                error = ModelLoadError(f"failed to load '{name}', {exc.message}")
                error.code = exc.code
                raise error from exc
            except Exception as exc:  # a backend bug must not escape as a crash
                if source_path is not None:
                    remove_override_folder(source_path)
                log.exception("unexpected error loading model '%s'", name)
                self.registry.fail_load(name, f"{type(exc).__name__}: {exc}", old)
                if quiet:
                    return
                raise InternalError(f"failed to load '{name}', {exc}") from exc
            previous_override = self._overrides.replace(name, source_path)
            # new versions are ready before the old ones stop taking requests
            await self.registry.install(name, plan.versions, old)
            if previous_override is not None:
                remove_override_folder(previous_override)

    async def _plan(
        self, name: str, override: ModelConfig | None, source_path: Path | None
    ) -> LoadPlan:
        """Prepare ``name`` off the loop (bounded by ``--model-load-thread-count``), then link an
        ensemble to its composing models on the loop."""
        async with self._load_slots:
            plan = await asyncio.to_thread(self.loader.prepare, name, override, source_path)
        if is_ensemble(plan.config):
            await self._ensembles.link(name, plan.config, plan.versions)
        return plan

    async def unload(self, name: str, unload_dependents: bool = False) -> None:
        """Stop serving every version of ``name``; in-flight requests finish first (bounded).

        With ``unload_dependents`` the loaded ensembles that use ``name`` are unloaded too.
        Unloading a name nobody knows is a no-op, as in Triton.
        """
        if unload_dependents:
            for dependent in self.dependents(name):
                await self.unload(dependent, unload_dependents=True)
        async with self.registry.lock(name):
            await self.registry.take_down(name)
            self._overrides.drop(name)

    async def poll(self) -> watch.Changes:
        """POLL mode: apply what changed on disk since the last scan (added models load,
        removed ones unload, changed ones reload; a failed reload keeps the old one serving)."""
        return await self.poller.poll()

    async def unload_all(self) -> None:
        await asyncio.gather(*(self.unload(n) for n in self.registry.loaded()))
