"""System shared memory: POSIX regions that clients register, and requests read and write.

Triton's ``system_shared_memory`` extension, transport-free. A client creates a POSIX shared
memory object (``shm_open("/input_simple")``, which Linux keeps as ``/dev/shm/input_simple``),
registers ``[offset, offset + byte_size)`` of it under a region name, then names that region in
infer requests instead of sending tensor bytes. :class:`SharedMemoryManager` maps each
registered region once (``os.open`` + ``mmap``; the descriptor is closed right away, as Triton
does) and checks every access against the region's bounds with Triton's messages.

A request pins the regions it touches through a :class:`ShmLease`; unregistering a pinned region
removes its name at once (so new requests cannot use it) but unmaps it only when the last lease
lets go, so an output region unregistered mid-request still receives its output. Inputs are
copied out of the region once (:meth:`ShmLease.read`), so no array outlives the mapping it came
from. (Python's ``mmap`` guards too: it refuses to unmap while a view points into it, in which
case the mapping goes when that last view does.)

Everything here runs on the event loop thread: register is one ``open`` + ``fstat`` + ``mmap``,
cheap enough to run inline.
"""

from __future__ import annotations

import logging
import mmap
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AlreadyExists, InternalError, InvalidArgument, NotFound
from .inference import RequestedOutput

log = logging.getLogger(__name__)

#: where Linux keeps POSIX shared memory objects
SHM_ROOT = Path("/dev/shm")


@dataclass(eq=False)
class Region:
    """One registered region and its mapping."""

    name: str
    key: str
    offset: int
    byte_size: int
    #: the mapping, which starts ``base`` bytes before the region (mmap offsets are page aligned)
    mapping: mmap.mmap | None = field(repr=False, default=None)
    base: int = 0
    #: leases (in-flight requests) holding the region
    users: int = 0
    #: unregistered: unmap once ``users`` drops to 0
    retired: bool = False

    def status(self) -> dict[str, object]:
        return {
            "name": self.name,
            "key": self.key,
            "offset": self.offset,
            "byte_size": self.byte_size,
        }

    def bounds(self, offset: int, size: int) -> tuple[int, int]:
        """Absolute ``[start, end)`` in the mapping of ``size`` bytes at ``offset``."""
        if offset < 0 or size < 0 or offset >= self.byte_size:
            raise InvalidArgument(f"Invalid offset for shared memory region: '{self.name}'")
        if offset + size > self.byte_size:
            raise InvalidArgument(
                f"Invalid offset + byte size for shared memory region: '{self.name}'"
            )
        start = self.base + offset
        return start, start + size

    def unmap(self) -> bool:
        """Unmap now if nothing points into the mapping; else leave that to the last view."""
        mapping, self.mapping = self.mapping, None
        if mapping is None:
            return True
        try:
            mapping.close()
        except BufferError:
            # views are still alive; the mapping goes when the last one is released
            log.debug("shared memory region '%s' is unmapped when its last view goes", self.name)
            return False
        return True


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or ".." in name or "\0" in name:
        raise InvalidArgument(
            f"failed to register shared memory region '{name}': the region name must be "
            "non-empty, without path separators or '..'"
        )


def _key_path(name: str, key: str, root: Path) -> Path:
    """The file of POSIX shm key ``key`` (``/name`` or ``name``), refusing anything path-like."""
    stem = key[1:] if key.startswith("/") else key
    if not stem or "/" in stem or "\\" in stem or ".." in stem or "\0" in stem:
        raise InvalidArgument(
            f"failed to register shared memory region '{name}': invalid shared memory key "
            f"'{key}' (expected '/name' without further '/' or '..')"
        )
    return root / stem


class SharedMemoryManager:
    """The registered system shared memory regions of one server."""

    def __init__(self, root: Path = SHM_ROOT) -> None:
        self.root = root
        self._regions: dict[str, Region] = {}
        #: unregistered while in use; unmapped when their last lease is released
        self._retired: list[Region] = []

    # ---- registration ----------------------------------------------------------------------

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map ``byte_size`` bytes at ``offset`` of POSIX shm object ``key`` as region ``name``."""
        _check_name(name)
        path = _key_path(name, key, self.root)
        if name in self._regions:
            raise AlreadyExists(f"shared memory region '{name}' already in manager")
        if offset < 0 or byte_size <= 0:
            raise InvalidArgument(f"failed to register shared memory region '{name}': invalid args")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            log.debug("open %s failed: %s", path, exc)
            raise InternalError(f"Unable to open shared memory region: '{key}'") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InternalError(f"Invalid shared memory region: '{key}'")
            if offset + byte_size > st.st_size:
                raise InvalidArgument(
                    f"failed to register shared memory region '{name}': invalid args"
                )
            base = offset % mmap.ALLOCATIONGRANULARITY
            try:
                mapping = mmap.mmap(
                    fd,
                    base + byte_size,
                    flags=mmap.MAP_SHARED,
                    prot=mmap.PROT_READ | mmap.PROT_WRITE,
                    offset=offset - base,
                )
            except (OSError, ValueError) as exc:
                raise InvalidArgument(
                    f"failed to register shared memory region '{name}': unable to process "
                    f"address space {exc}"
                ) from exc
        finally:
            os.close(fd)
        self._regions[name] = Region(name, key, offset, byte_size, mapping, base)
        log.debug("registered shared memory region '%s' (%s, %d bytes)", name, key, byte_size)

    def unregister(self, name: str = "") -> None:
        """Unregister region ``name``, or every region when ``name`` is empty.

        An unknown name is a no-op (as in Triton). A region in use by an in-flight request
        disappears from the manager now and is unmapped when that request finishes.
        """
        names = [name] if name else list(self._regions)
        for n in names:
            region = self._regions.pop(n, None)
            if region is None:
                continue
            region.retired = True
            if region.users:
                self._retired.append(region)
            else:
                region.unmap()

    def regions(self) -> list[Region]:
        """The registered regions, in registration order."""
        return list(self._regions.values())

    def status(self, name: str = "") -> list[dict[str, object]]:
        """``GET /v2/systemsharedmemory[/region/{name}]/status``."""
        if not name:
            return [r.status() for r in self._regions.values()]
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find system shared memory region: '{name}'")
        return [region.status()]

    def close(self) -> int:
        """Unregister everything (server stop); returns how many regions were unmapped."""
        regions = list(self._regions.values()) + self._retired
        self._regions.clear()
        self._retired.clear()
        unmapped = 0
        for region in regions:
            region.retired = True
            unmapped += region.unmap()
        return unmapped

    def __len__(self) -> int:
        return len(self._regions)

    # ---- access ----------------------------------------------------------------------------

    def _find(self, name: object) -> Region:
        region = self._regions.get(name) if isinstance(name, str) else None
        if region is None:
            raise NotFound(f"Unable to find shared memory region: '{name}'")
        return region

    def lease(self) -> ShmLease:
        """A lease for one request: what it reads or reserves stays mapped until release."""
        return ShmLease(self)

    def _release(self, region: Region) -> None:
        region.users -= 1
        if region.retired and region.users == 0:
            region.unmap()
            if region in self._retired:
                self._retired.remove(region)


def write_region(
    region: Region, offset: int, size: int, data: bytes | memoryview, output: str
) -> None:
    """Copy ``data`` (an output's wire bytes) into ``size`` bytes at ``offset`` of ``region``."""
    start, _ = region.bounds(offset, size)
    n = len(data) if not isinstance(data, memoryview) else data.nbytes
    if n > size:
        raise InternalError(
            f"shared memory size specified with the request for output '{output}' ({size} "
            f"bytes) should be at least {n} bytes to hold the results"
        )
    assert region.mapping is not None
    region.mapping[start : start + n] = data


class ShmLease:
    """The regions one request uses, pinned until :meth:`release` (or the ``with`` block ends).

    ``read`` and ``write`` have the signatures of :data:`naiad.http.codec.ShmReader` and the
    codec's ``shm_writer`` hook.
    """

    def __init__(self, manager: SharedMemoryManager) -> None:
        self._manager = manager
        self._held: dict[str, Region] = {}

    def _pin(self, name: object) -> Region:
        if isinstance(name, str) and name in self._held:
            return self._held[name]
        region = self._manager._find(name)
        region.users += 1
        self._held[region.name] = region
        return region

    def read(self, name: str, offset: int, size: int) -> memoryview:
        """``size`` bytes at ``offset`` of region ``name``, copied out once (read-only).

        The one copy (no HTTP transfer is saved by skipping it) means nothing in the request
        points into the mapping: the model sees a snapshot the client cannot change mid-request,
        and an unregistered region is unmapped at once, whoever still holds the input arrays.
        """
        region = self._pin(name)
        start, end = region.bounds(offset, size)
        assert region.mapping is not None
        return memoryview(region.mapping[start:end])

    def reserve(self, outputs: Iterable[RequestedOutput] | None) -> None:
        """Check and pin the regions of outputs that go to shared memory, before inference."""
        for out in outputs or ():
            if out.shm is not None:
                name, size, offset = out.shm
                self._pin(name).bounds(offset, size)

    def write(
        self, name: str, offset: int, size: int, data: bytes | memoryview, output: str
    ) -> None:
        """Write output ``output``'s bytes into region ``name``."""
        write_region(self._pin(name), offset, size, data, output)

    def release(self) -> None:
        held, self._held = self._held, {}
        for region in held.values():
            self._manager._release(region)

    def __enter__(self) -> ShmLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
