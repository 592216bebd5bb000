"""A remote model repository mirrored into a local folder, so the rest of naiad reads plain files.

``refresh()`` lists the whole repository once (one recursive listing) and gives each model a
fingerprint built from its objects' ETag, size and modification time; it also makes an (empty)
folder per model in the cache so that scans of the cache see every model. ``fetch(name)`` lists
that one model again and downloads only the objects whose ETag/size/mtime differ from what is in
the cache, removing files whose objects are gone. A manifest next to the cache remembers what was
downloaded, so a persistent cache (``TRITON_AWS_MOUNT_DIRECTORY``...) survives a restart.

Everything here is blocking network and file I/O: callers run it off the event loop.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument
from ..overrides import check_relative_file
from .location import RemoteLocation

log = logging.getLogger(__name__)

MANIFEST = ".naiad-remote.json"
#: what identifies one object's content: (etag, size, mtime) as strings
Signature = tuple[str, str, str]


class RemoteError(OSError):
    """A remote repository that cannot be read, with a message fit for a user."""


class DownloadError(RemoteError):
    """A listed object that could not be downloaded: the model's cache folder is incomplete."""


def describe_error(url: str, exc: BaseException) -> str:
    """One line that says what went wrong reading ``url`` and what to check."""
    if isinstance(exc, PermissionError):
        what = f"access denied, check the credentials ({exc})"
    elif isinstance(exc, FileNotFoundError):
        what = f"bucket or container not found ({exc})"
    else:
        what = f"{type(exc).__name__}: {exc}"
    return f"cannot read model repository {url}: {what}"


def _signature(info: dict[str, Any]) -> Signature:
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("crc32c") or ""
    mtime = (
        info.get("LastModified")
        or info.get("last_modified")
        or info.get("updated")
        or info.get("mtime")
        or ""
    )
    return (str(etag), str(info.get("size", "")), str(mtime))


class RemoteRepository:
    """One ``s3://``/``gs://``/``as://`` repository and its local mirror at ``path``."""

    def __init__(self, location: RemoteLocation, path: Path, *, keep: bool) -> None:
        self.location = location
        #: the local folder the rest of naiad reads as this repository
        self.path = path
        #: a persistent mount directory is left in place at close()
        self._keep = keep
        self._fs: Any = None
        self._lock = threading.Lock()
        #: relative object path -> signature of the file downloaded for it
        self._manifest: dict[str, Signature] | None = None
        #: model name -> fingerprint, from the last listing that succeeded
        self._fingerprints: dict[str, int] = {}
        #: the last listing's failure, or None
        self.error: str | None = None

    @property
    def url(self) -> str:
        return self.location.url

    # ---- the two operations the model registry uses -----------------------------------------

    def refresh(self) -> dict[str, int]:
        """List the repository: model name -> fingerprint of its objects.

        On failure the error is kept in ``error`` (and logged) and the fingerprints of the last
        good listing are returned, so a passing outage reloads or unloads nothing.
        """
        try:
            # the cache folder exists even when the remote cannot be read: scans see it empty
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            objects = self._list(self.location.root)
        except OSError as exc:
            if not isinstance(exc, RemoteError):
                exc = RemoteError(f"cannot read model repository {self.url}: {exc}")
            if self.error != str(exc):
                log.error("%s", exc)
            self.error = str(exc)
            return dict(self._fingerprints)
        self.error = None
        by_model: dict[str, list] = {}
        for rel, sig in objects.items():
            name, _, rest = rel.partition("/")
            if rest:  # files directly under the repository root are not models
                by_model.setdefault(name, []).append((rest, sig))
        with self._lock:
            for name in by_model:
                (self.path / name).mkdir(exist_ok=True)
            for entry in os.scandir(self.path):
                if entry.is_dir() and not entry.name.startswith(".") and entry.name not in by_model:
                    self._forget(entry.name)
        self._fingerprints = {n: hash(tuple(sorted(items))) for n, items in by_model.items()}
        return dict(self._fingerprints)

    def fetch(self, name: str) -> bool:
        """Bring ``<path>/<name>`` up to date with the remote model; False if it has no objects.

        Raises RemoteError when the repository cannot be read.
        """
        objects = self._list(f"{self.location.root}/{name}")
        with self._lock:
            manifest = self._load_manifest()
        if not objects:
            with self._lock:
                self._forget(name)
            return False
        model_dir = self.path / name
        fetched = 0
        for rest, sig in sorted(objects.items()):
            rel = f"{name}/{rest}"
            target = model_dir.joinpath(*rest.split("/"))
            if manifest.get(rel) == sig and _size_matches(target, sig):
                continue
            self._download(f"{self.location.root}/{rel}", target)
            fetched += 1
            with self._lock:
                manifest[rel] = sig
        with self._lock:
            for rel in [r for r in manifest if r.startswith(f"{name}/")]:
                if rel.partition("/")[2] not in objects:
                    del manifest[rel]
                    _remove_file(self.path, rel)
            self._save_manifest()
        if fetched:
            log.info("downloaded %d file(s) of model '%s' from %s", fetched, name, self.url)
        return True

    def close(self) -> None:
        """Remove a private cache folder (a mount directory named by the user stays)."""
        if not self._keep:
            shutil.rmtree(self.path, ignore_errors=True)

    # ---- helpers ------------------------------------------------------------------------------

    def _filesystem(self) -> Any:
        if self._fs is None:
            loc = self.location
            try:
                import fsspec  # lazily: `import naiad` never pulls in fsspec or a cloud SDK

                self._fs = fsspec.filesystem(loc.protocol, **loc.options)
            except Exception as exc:
                if isinstance(exc, ImportError) or "Protocol not known" in str(exc):
                    raise RemoteError(
                        f"cannot read model repository {loc.url}: {loc.scheme}:// repositories "
                        f"need {loc.package}: pip install 'naiad[{loc.extra}]'"
                    ) from exc
                raise RemoteError(describe_error(loc.url, exc)) from exc
        return self._fs

    def _list(self, prefix: str) -> dict[str, Signature]:
        """Every object under ``prefix``: path relative to ``prefix`` -> signature."""
        fs = self._filesystem()
        try:
            fs.invalidate_cache(prefix)
            found = fs.find(prefix, detail=True)
        except RemoteError:
            raise
        except Exception as exc:  # the SDKs raise their own kinds besides OSError
            raise RemoteError(describe_error(self.url, exc)) from exc
        out: dict[str, Signature] = {}
        base = prefix.rstrip("/") + "/"
        for full, info in found.items():
            if info.get("type") == "directory" or full.endswith("/") or not full.startswith(base):
                continue
            rel = full[len(base) :]
            try:
                check_relative_file(rel, "object")
            except InvalidArgument as exc:
                log.warning("%s: skipping %s", self.url, exc)
                continue
            out[rel] = _signature(info)
        return out

    def _download(self, remote_path: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        try:
            self._filesystem().get_file(remote_path, str(partial))
            os.replace(partial, target)
        except Exception as exc:
            partial.unlink(missing_ok=True)
            raise DownloadError(
                f"{describe_error(self.url, exc)} (downloading {remote_path})"
            ) from exc

    def _forget(self, name: str) -> None:
        """Drop a model that is gone from the remote (caller holds the lock)."""
        shutil.rmtree(self.path / name, ignore_errors=True)
        manifest = self._load_manifest()
        for rel in [r for r in manifest if r.startswith(f"{name}/")]:
            del manifest[rel]
        self._save_manifest()

    def _load_manifest(self) -> dict[str, Signature]:
        if self._manifest is None:
            try:
                raw = json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
                self._manifest = {k: tuple(v) for k, v in raw.items()}  # type: ignore[misc]
            except (OSError, ValueError, AttributeError, TypeError):
                self._manifest = {}
        return self._manifest

    def _save_manifest(self) -> None:
        if self._manifest is None or not self.path.is_dir():
            return
        tmp = self.path / f"{MANIFEST}.partial"
        tmp.write_text(json.dumps(self._manifest, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path / MANIFEST)


def _size_matches(target: Path, sig: Signature) -> bool:
    try:
        return str(target.stat().st_size) == sig[1] or not sig[1]
    except OSError:
        return False


def _remove_file(root: Path, rel: str) -> None:
    """Delete ``root/rel`` and the folders it leaves empty (never ``root`` itself)."""
    path = root.joinpath(*rel.split("/"))
    path.unlink(missing_ok=True)
    parent = path.parent
    while parent != root and root in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent
