"""Model repositories in object storage (``s3://``, ``gs://``, ``as://``), seen as local folders.

The model registry asks two things of this package, both blocking (run them off the loop):
:meth:`RemoteRepositories.refresh` (list every remote, fingerprint its models) and
:meth:`RemoteRepositories.fetch` (download one model's changed files into its cache folder).
Everything else in naiad reads the cache folders as it reads any local repository.

fsspec and the cloud SDKs (``naiad[s3]``, ``naiad[gcs]``, ``naiad[azure]``) are imported only
when a remote repository is first read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ..errors import ModelLoadError
from .location import (
    MOUNT_DIRECTORY_ENV,
    LocationError,
    RemoteLocation,
    is_remote,
    parse_location,
)
from .mirror import DownloadError, RemoteError, RemoteRepository

__all__ = [
    "LocationError",
    "RemoteError",
    "RemoteLocation",
    "RemoteRepositories",
    "RemoteRepository",
    "is_remote",
    "open_repositories",
    "parse_location",
]

log = logging.getLogger(__name__)


class RemoteRepositories:
    """The remote repositories of one server (possibly none)."""

    def __init__(self, remotes: list[RemoteRepository]) -> None:
        self.remotes = remotes

    def __bool__(self) -> bool:
        return bool(self.remotes)

    @property
    def errors(self) -> dict[str, str]:
        """URL -> why its last listing failed."""
        return {r.url: r.error for r in self.remotes if r.error}

    def refresh(self) -> dict[str, int]:
        """List every remote: model name -> fingerprint (a name in two remotes: the first's;
        the scan of the cache folders reports it as a duplicate anyway)."""
        prints: dict[str, int] = {}
        for remote in self.remotes:
            for name, value in remote.refresh().items():
                prints.setdefault(name, value)
        return prints

    def fetch(self, name: str) -> dict[Path, str]:
        """Download ``name`` from every remote that holds it. Returns cache folder -> error for
        the remotes that could not be listed (the caller decides whether that matters: the
        model may be local); a download that fails raises ModelLoadError."""
        errors: dict[Path, str] = {}
        for remote in self.remotes:
            try:
                remote.fetch(name)
            except DownloadError as exc:
                raise ModelLoadError(str(exc)) from exc
            except RemoteError as exc:
                errors[remote.path] = str(exc)
        return errors

    def close(self) -> None:
        for remote in self.remotes:
            remote.close()


def open_repositories(
    locations: list[Path | str], environ: Mapping[str, str] | None = None
) -> tuple[list[Path], RemoteRepositories]:
    """Local folders for every location, in order (a remote one's cache folder), and the
    remote repositories behind the cache folders. Nothing is read or created yet.

    Raises LocationError for a malformed URL or credentials file.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    paths: list[Path] = []
    remotes: list[RemoteRepository] = []
    for location in locations:
        if not is_remote(location):
            paths.append(Path(location))
            continue
        parsed = parse_location(str(location), env)
        mount = env.get(MOUNT_DIRECTORY_ENV[parsed.scheme])
        if mount:
            cache, keep = Path(mount) / _folder_name(parsed.url), True
        else:
            cache, keep = Path(tempfile.gettempdir()) / _private_name(parsed.url), False
        remotes.append(RemoteRepository(parsed, cache, keep=keep))
        paths.append(cache)
    return paths, RemoteRepositories(remotes)


def _folder_name(url: str) -> str:
    """A stable, readable folder name for ``url``: ``s3_bucket_path-1a2b3c4d``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", url)[:80].strip("_")
    return f"{slug}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def _private_name(url: str) -> str:
    """A folder name no other process uses: the URL's name plus this process and a random tag."""
    return f"naiad-remote-{os.getpid()}-{os.urandom(4).hex()}-{_folder_name(url)}"
