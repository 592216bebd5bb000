"""POLL mode: what changed in the model repositories since the last scan, applied.

:class:`RepositoryPoller` keeps one fingerprint per model folder (:mod:`naiad.watch`; a remote
model's comes from its objects' listing, :mod:`naiad.remote`). Scans run off the loop; the changes
are applied on it through the load and unload it is given: added models load, removed ones
unload, changed ones reload (a failed reload keeps the old version serving).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from . import repository, watch
from .remote import RemoteRepositories

log = logging.getLogger(__name__)

__all__ = ["RepositoryPoller"]


class RepositoryPoller:
    """Fingerprints of the repositories' models, and the loads/unloads their changes call for."""

    def __init__(
        self,
        repositories: list[Path],
        remotes: RemoteRepositories,
        load: Callable[[str], Awaitable[None]],
        unload: Callable[[str], Awaitable[None]],
    ) -> None:
        self.repositories = repositories
        self.remotes = remotes
        self._load = load
        self._unload = unload
        #: model name -> fingerprint of its folder at the last scan
        self._fingerprints: dict[str, int] = {}

    async def start(self) -> repository.RepositoryScan:
        """The first scan: remembers every model's fingerprint; returns what the repositories
        hold (the models to load at start-up)."""
        self._fingerprints = await asyncio.to_thread(self._snapshot)
        return await asyncio.to_thread(repository.scan_repositories, self.repositories)

    async def poll(self) -> watch.Changes:
        """Scan again and apply what changed since the last scan."""
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
            *(self._load(n) for n in changes.added + changes.changed),
            *(self._unload(n) for n in changes.removed),
        )
        return changes

    def _snapshot(self) -> dict[str, int]:
        """Fingerprints (worker thread): a remote model's come from its objects' listing."""
        remote_prints = self.remotes.refresh() if self.remotes else {}
        local = watch.snapshot(self.repositories)
        return {name: remote_prints.get(name, value) for name, value in local.items()}
