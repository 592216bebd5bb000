"""Reading model repositories from disk: folders, version folders, config files.

Everything here is plain synchronous file I/O; callers run it off the event loop.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CONFIG_FILENAME = "config.pbtxt"
#: folders inside a model folder that are never versions
_NOT_VERSIONS = {"warmup", "initial_state", "configs"}


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where one model lives on disk."""

    name: str
    #: ``<repository>/<model>``
    path: Path
    repository: Path

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILENAME


@dataclass(frozen=True, slots=True)
class RepositoryScan:
    models: dict[str, ModelSource]
    #: names found in more than one repository (Triton loads none of them)
    duplicates: frozenset[str]


def scan_repositories(repositories: list[Path]) -> RepositoryScan:
    """Every model folder in every repository. A name present twice is reported, not loaded."""
    seen: dict[str, ModelSource] = {}
    duplicates: set[str] = set()
    for repo in repositories:
        try:
            entries = sorted(os.scandir(repo), key=lambda e: e.name)
        except OSError as exc:
            log.error("cannot read model repository %s: %s", repo, exc)
            continue
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            if entry.name in seen:
                duplicates.add(entry.name)
                continue
            seen[entry.name] = ModelSource(entry.name, Path(entry.path), Path(repo))
    return RepositoryScan(seen, frozenset(duplicates))


def find_model(repositories: list[Path], name: str) -> ModelSource | None:
    """The folder of one model, or None. Several matches count as none found (see scan)."""
    found = [Path(repo) / name for repo in repositories if (Path(repo) / name).is_dir()]
    if len(found) != 1:
        return None
    return ModelSource(name, found[0], found[0].parent)


def version_numbers(model_path: Path) -> list[int]:
    """Numeric version folders, ascending. ``01`` and non-numbers are ignored, as in Triton."""
    versions = []
    try:
        entries = list(os.scandir(model_path))
    except OSError:
        return []
    for entry in entries:
        name = entry.name
        if name in _NOT_VERSIONS or not entry.is_dir():
            continue
        if not name.isdigit() or (len(name) > 1 and name[0] == "0"):
            if not name.startswith("."):
                log.debug("ignoring non-version folder %s in %s", name, model_path)
            continue
        versions.append(int(name))
    return sorted(versions)


def read_config_text(source: ModelSource) -> str | None:
    """The text of config.pbtxt, or None if the model has none."""
    try:
        return source.config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def read_labels(model_path: Path, filename: str) -> list[str]:
    """Labels of a ``label_filename``: line i names class i."""
    path = (model_path / filename).resolve()
    if model_path.resolve() not in path.parents:
        raise ValueError(f"label file '{filename}' lies outside the model folder")
    return path.read_text(encoding="utf-8").splitlines()
