"""The live model registry: which model versions exist, their states and reasons.

Everything here runs on the event loop. :class:`ModelRegistry` answers the queries of the data
plane (resolve, index, readiness) and owns the state changes of a lifecycle: a load's new versions
replace the old ones only once they are READY (load before unload), and a version that stops
serving first drains the requests it already took, then releases its instances, each on its own
thread. Preparing a model (config, instances) is :mod:`naiad.model_loader`'s job, off the loop.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .config import ModelConfig
from .errors import NotFound, Unavailable
from .scheduling import Instance, Scheduler
from .signature import Signature
from .stats import ModelStats

log = logging.getLogger(__name__)

__all__ = ["ModelRegistry", "ModelState", "ModelVersion"]


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


class ModelRegistry:
    """Every model version known, with its state. Loop thread only."""

    def __init__(self, *, unload_timeout: float = 30.0) -> None:
        #: how long a retiring version waits for the requests it took (``--exit-timeout-secs``)
        self.unload_timeout = unload_timeout
        self._versions: dict[str, dict[int, ModelVersion]] = {}
        #: model-level failure (no versions to attach it to), e.g. a config that does not parse
        self._model_errors: dict[str, str] = {}
        #: one lifecycle change (load, reload, unload) at a time per model
        self._locks: dict[str, asyncio.Lock] = {}
        #: models being loaded that have no version yet (shown as LOADING)
        self._loading: set[str] = set()

    # ---- queries (no awaits) -------------------------------------------------------------------

    def resolve(self, name: str, version: int = -1) -> ModelVersion:
        """The version to serve, with Triton's errors for unknown/unready models."""
        versions = self._versions.get(name)
        if not versions:
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        if version < 0:  # the highest READY version (every request of most clients)
            best: ModelVersion | None = None
            for candidate in versions.values():
                if candidate.state is ModelState.READY and (
                    best is None or candidate.version > best.version
                ):
                    best = candidate
            if best is None:
                raise NotFound(f"Request for unknown model: '{name}' has no available versions")
            return best
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

    def loaded(self) -> list[str]:
        """Models with versions (serving, or kept for the index after an unload)."""
        return list(self._versions)

    def all_ready(self) -> bool:
        """Every model known has every version READY (unloaded ones do not count)."""
        if self._model_errors:
            return False
        for versions in self._versions.values():
            for mv in versions.values():
                if mv.state is not ModelState.READY and mv.reason != "unloaded":
                    return False
        return True

    def index(self, ready_only: bool = False, on_disk: Iterable[str] = ()) -> list[dict]:
        """Entries of ``/v2/repository/index``; ``on_disk`` adds the repositories' models that
        were never loaded (without a state, as in Triton)."""
        out: list[dict] = []
        names = set(self.names())
        if not ready_only:
            names |= set(on_disk)
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

    # ---- lifecycle -----------------------------------------------------------------------------

    def lock(self, name: str) -> asyncio.Lock:
        """Held for the whole of a load, reload or unload of ``name``."""
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def begin_load(self, name: str) -> dict[int, ModelVersion]:
        """A load of ``name`` starts (lock held): its current versions; a model with none shows
        as LOADING until the load ends."""
        old = self._versions.get(name, {})
        if not old:
            self._loading.add(name)
        return old

    def record_error(self, name: str, reason: str) -> None:
        """A model-level failure with no versions to attach it to."""
        self._model_errors[name] = reason

    def fail_load(
        self, name: str, reason: str, old: dict[int, ModelVersion], found: bool = True
    ) -> None:
        """A load of ``name`` failed: a model that was serving keeps serving (the error goes back
        to the caller); otherwise the model is UNAVAILABLE with ``reason``. A name that no
        repository has (``found`` false) and that was never loaded stays unknown, as in Triton."""
        self._loading.discard(name)
        log.error("failed to load model '%s': %s", name, reason)
        if any(mv.state is ModelState.READY for mv in old.values()):
            return
        if not found and not old:
            return
        self._model_errors[name] = reason
        self._versions.pop(name, None)

    async def install(
        self, name: str, new: dict[int, ModelVersion], old: dict[int, ModelVersion]
    ) -> None:
        """A load of ``name`` succeeded: ``new`` (READY) takes requests from now on, then the
        ``old`` versions it replaces drain and are released."""
        self._loading.discard(name)
        self._model_errors.pop(name, None)
        merged = dict(new)
        retiring = [mv for mv in old.values() if mv.state is ModelState.READY]
        for mv in old.values():
            if mv.version not in merged and mv.state is not ModelState.READY:
                merged[mv.version] = mv  # keep history (unloaded/unavailable) for the index
        self._versions[name] = merged
        for mv in new.values():
            log.info("model '%s' version %d is READY", name, mv.version)
        await self._retire(retiring, merged)

    async def take_down(self, name: str) -> None:
        """Unload (lock held): every serving version of ``name`` drains and is released; they
        stay in the index as UNAVAILABLE "unloaded"."""
        versions = self._versions.get(name, {})
        live = [mv for mv in versions.values() if mv.state is ModelState.READY]
        for mv in live:
            mv.state = ModelState.UNLOADING
        await self._retire(live, {})
        self._model_errors.pop(name, None)

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
            # each instance unloads on its own thread
            await asyncio.gather(*(i.executor.run(i.unload) for i in mv.instances))
            mv.state = ModelState.UNAVAILABLE
            mv.reason = "unloaded"
            if mv.version not in current:
                current[mv.version] = mv
            log.info("model '%s' version %d unloaded", mv.name, mv.version)
