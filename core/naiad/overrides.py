"""Model folders written from a load request's ``file:<path>`` parameters.

Triton's load API can carry a whole model as ``file:`` parameters (base64 strings over HTTP, raw
bytes over gRPC); Triton once wrote them wherever the path pointed (CVE-2023-31036). Here every
file lands inside a fresh private temporary folder: relative paths only, no ``..``, no absolute
paths, no backslashes, no symlinks followed, no file written twice. A path component longer than
the file system allows (NAME_MAX) fails as Triton's does: INTERNAL "failed to poll from model
repository".
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import InvalidArgument, RepositoryPollError

log = logging.getLogger(__name__)

#: the longest file name (one path component, in bytes) Linux file systems take
NAME_MAX = 255

_NAME = re.compile(r"^[A-Za-z0-9_.\-][A-Za-z0-9_.\- ]{0,254}$")


def check_model_name(name: str) -> None:
    """A model name is one plain path component: it names a folder of the repository."""
    if not name or name in (".", "..") or name.startswith(".") or not _NAME.match(name):
        raise InvalidArgument(
            f"invalid model name '{name}': use letters, digits, '_', '-', '.' and spaces, not "
            "starting with '.'"
        )


def check_relative_file(path: str, what: str) -> None:
    """Refuse anything that could reach outside the folder it is resolved against."""
    if (
        not path
        or "\\" in path
        or "\x00" in path
        or path.startswith("/")
        or os.path.isabs(path)
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise InvalidArgument(f"{what} '{path}' must be a relative path inside the model folder")


def decode_base64_files(files: dict[str, object]) -> dict[str, bytes]:
    """HTTP's ``file:`` parameters (path -> base64 string) as raw bytes."""
    decoded = {}
    for rel, encoded in files.items():
        if not isinstance(encoded, str):
            raise InvalidArgument(f"file override '{rel}' must be a base64 string")
        try:
            decoded[rel] = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidArgument(f"file override '{rel}' is not valid base64: {exc}") from exc
    return decoded


def write_override_folder(name: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` (path -> bytes) to ``<private tmp>/<name>/`` and return that folder.

    Raises InvalidArgument for unsafe paths, and Triton's RepositoryPollError when the file
    system refuses a name (too long, too deep, a file where a folder must be);
    nothing is left behind on failure.
    """
    check_model_name(name)
    for rel in files:
        check_relative_file(rel, "file override")
        if any(len(part.encode()) > NAME_MAX for part in rel.split("/")):
            raise RepositoryPollError()
    root = Path(tempfile.mkdtemp(prefix="naiad-override-"))
    model_dir = root / name
    try:
        model_dir.mkdir(mode=0o700)
        for rel, data in files.items():
            target = model_dir.joinpath(*rel.split("/"))
            parent = target.parent
            parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # every folder on the way was made by us just now: refuse anything else
            if parent.resolve() != parent or model_dir.resolve() not in (
                parent.resolve(),
                *parent.resolve().parents,
            ):
                raise InvalidArgument(f"file override '{rel}' escapes the model folder")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            try:
                fd = os.open(target, flags, 0o600)
            except FileExistsError as exc:
                raise InvalidArgument(f"file override '{rel}' is given twice") from exc
            with os.fdopen(fd, "wb") as f:
                f.write(data)
    except OSError as exc:
        shutil.rmtree(root, ignore_errors=True)
        log.warning("file overrides of '%s' could not be written: %s", name, exc.strerror)
        raise RepositoryPollError() from exc
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return model_dir


def remove_override_folder(model_dir: Path) -> None:
    """Delete a folder made by :func:`write_override_folder` (its private parent included)."""
    root = model_dir.parent
    if root.name.startswith("naiad-override-"):
        shutil.rmtree(root, ignore_errors=True)


class OverrideFolders:
    """Which loaded model serves from a folder written by :func:`write_override_folder`."""

    def __init__(self) -> None:
        self._dirs: dict[str, Path] = {}

    def replace(self, name: str, folder: Path | None) -> Path | None:
        """``name`` now serves from ``folder`` (None: from a repository). Returns the folder it
        served from before, for the caller to remove once the old versions are released."""
        previous = self._dirs.pop(name, None)
        if folder is not None:
            self._dirs[name] = folder
        return previous

    def drop(self, name: str) -> None:
        """``name`` was unloaded: its folder (if any) is deleted."""
        folder = self._dirs.pop(name, None)
        if folder is not None:
            remove_override_folder(folder)
