"""Change detection for POLL mode: a cheap fingerprint of each model folder.

A fingerprint is a hash of (relative path, type, size, mtime) of everything under the model
folder. Comparing fingerprints finds added, removed and changed models without reading any file;
a scan is plain ``os.scandir`` work and runs off the event loop.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .repository import scan_repositories


def fingerprint(model_dir: Path) -> str:
    """A digest that changes when anything under ``model_dir`` is added, removed or modified."""
    h = hashlib.blake2b(digest_size=16)
    stack = [(str(model_dir), "")]
    while stack:
        path, rel = stack.pop()
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            name = f"{rel}/{entry.name}"
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError:
                continue
            is_dir = entry.is_dir()
            h.update(f"{name}\0{int(is_dir)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            if is_dir:
                stack.append((entry.path, name))
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Changes:
    added: list[str]
    removed: list[str]
    changed: list[str]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def snapshot(repositories: list[Path]) -> dict[str, str]:
    """model name -> fingerprint, for every model folder (duplicates excluded)."""
    scan = scan_repositories(repositories)
    return {
        name: fingerprint(src.path)
        for name, src in scan.models.items()
        if name not in scan.duplicates
    }


def diff(before: dict[str, str], after: dict[str, str]) -> Changes:
    return Changes(
        added=sorted(set(after) - set(before)),
        removed=sorted(set(before) - set(after)),
        changed=sorted(n for n in set(before) & set(after) if before[n] != after[n]),
    )
