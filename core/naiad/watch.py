"""Change detection for POLL mode: a cheap fingerprint of each model folder.

A fingerprint is a hash of (relative path, type, size, mtime) of everything under the model
folder. Comparing fingerprints finds added, removed and changed models without reading any file;
a scan is plain ``os.scandir`` work and runs off the event loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .repository import scan_repositories


def fingerprint(model_dir: Path) -> int:
    """A value that changes when anything under ``model_dir`` is added, removed or modified.

    Only compared within one process (it uses Python's ``hash``), so it is cheap: one
    ``stat`` per entry and no formatting.
    """
    items: list[tuple] = []
    stack = [str(model_dir)]
    while stack:
        path = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat()
            except OSError:
                continue
            is_dir = entry.is_dir()
            items.append((entry.path, is_dir, st.st_size, st.st_mtime_ns))
            if is_dir:
                stack.append(entry.path)
    items.sort()
    return hash(tuple(items))


@dataclass(frozen=True, slots=True)
class Changes:
    added: list[str]
    removed: list[str]
    changed: list[str]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def snapshot(repositories: list[Path]) -> dict[str, int]:
    """model name -> fingerprint, for every model folder (duplicates excluded)."""
    scan = scan_repositories(repositories)
    return {
        name: fingerprint(src.path)
        for name, src in scan.models.items()
        if name not in scan.duplicates
    }


def diff(before: dict[str, int], after: dict[str, int]) -> Changes:
    return Changes(
        added=sorted(set(after) - set(before)),
        removed=sorted(set(before) - set(after)),
        changed=sorted(n for n in set(before) & set(after) if before[n] != after[n]),
    )
