"""System shared memory: POSIX regions that clients register, and requests read and write.

Triton's ``system_shared_memory`` extension, transport-free. A client creates a POSIX shared
memory object (``shm_open("/input_simple")``, which Linux keeps as ``/dev/shm/input_simple``),
registers ``[offset, offset + byte_size)`` of it under a region name, then names that region in
infer requests instead of sending tensor bytes. :class:`SharedMemoryManager` opens each
registered region's object once, keeps the descriptor, and checks every access against the
region's bounds with Triton's messages.

The region is never mapped into the server: a client owns the object and can ``ftruncate`` it
at any moment, and touching a mapped page past the new end is a SIGBUS that kills the process
(Python cannot catch it safely). Reads copy with ``pread``, which returns short instead of
faulting; writes check the object's current size (``fstat``) and copy with ``pwrite`` (which
would otherwise grow a truncated object). A truncated object fails only the request that uses
it; a replaced or unlinked one keeps its old contents, as a mapping would. The price is the
kernel's per-page copy path instead of a memcpy: a few µs per request, about twice the copy
time for large tensors (docs/performance.md).

A request pins the regions it touches through a :class:`ShmLease`; unregistering a pinned region
removes its name at once (so new requests cannot use it) but closes its descriptor only when the
last lease lets go, so an output region unregistered mid-request still receives its output.
Inputs are copied out of the region once (:meth:`ShmLease.read`): the model sees a snapshot the
client cannot change mid-request.

Register and unregister run on the event loop thread (one ``open`` + ``fstat``); reads and writes
run where the request is parsed or encoded, on the loop or a worker thread.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from .errors import AlreadyExists, InternalError, InvalidArgument, NotFound
from .inference import RequestedOutput

log = logging.getLogger(__name__)

#: where Linux keeps POSIX shared memory objects
SHM_ROOT = Path("/dev/shm")
#: the most one ``pread``/``pwrite`` call moves on Linux
_IO_MAX = 0x7FFFF000


class RegionStatus(TypedDict):
    """One region as the shared-memory status routes answer it."""

    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(eq=False)
class Region:
    """One registered region and the open descriptor of its object."""

    name: str
    key: str
    offset: int
    byte_size: int
    #: the object's descriptor, -1 once closed
    fd: int = field(repr=False, default=-1)
    #: leases (in-flight requests) holding the region
    users: int = 0
    #: unregistered: close once ``users`` drops to 0
    retired: bool = False

    def status(self) -> RegionStatus:
        return {
            "name": self.name,
            "key": self.key,
            "offset": self.offset,
            "byte_size": self.byte_size,
        }

    def bounds(self, offset: int, size: int) -> tuple[int, int]:
        """Absolute ``[start, end)`` in the object of ``size`` bytes at ``offset``."""
        if offset < 0 or size < 0 or offset >= self.byte_size:
            raise InvalidArgument(f"Invalid offset for shared memory region: '{self.name}'")
        if offset + size > self.byte_size:
            raise InvalidArgument(
                f"Invalid offset + byte size for shared memory region: '{self.name}'"
            )
        start = self.offset + offset
        return start, start + size

    def _check_size(self, end: int) -> None:
        """The object still holds ``[0, end)`` (a client may have truncated it)."""
        if self.fd < 0:
            raise NotFound(f"Unable to find shared memory region: '{self.name}'")
        size = os.fstat(self.fd).st_size
        if size < end:
            raise self._shrunk(size)

    def _shrunk(self, size: int) -> InvalidArgument:
        return InvalidArgument(
            f"shared memory region '{self.name}' is no longer valid: its object '{self.key}' "
            f"holds {size} bytes, fewer than the {self.offset + self.byte_size} registered"
        )

    def read(self, offset: int, size: int) -> bytes:
        """A copy of ``size`` bytes at ``offset`` of the region (a short read: truncated)."""
        start, _ = self.bounds(offset, size)
        if self.fd < 0:
            raise NotFound(f"Unable to find shared memory region: '{self.name}'")
        data = os.pread(self.fd, size, start)
        if len(data) < size:  # truncated by the client, or a read of more than _IO_MAX
            parts = [data]
            got = len(data)
            while got < size:
                part = os.pread(self.fd, size - got, start + got)
                if not part:
                    raise self._shrunk(os.fstat(self.fd).st_size)
                parts.append(part)
                got += len(part)
            data = b"".join(parts)
        return data

    def write(self, offset: int, size: int, data: bytes | memoryview) -> None:
        """Copy ``data`` (at most ``size`` bytes) to ``offset`` of the region."""
        start, _ = self.bounds(offset, size)
        view = memoryview(data).cast("B")
        self._check_size(start + view.nbytes)
        done = 0
        while done < view.nbytes:
            try:
                done += os.pwrite(self.fd, view[done : done + _IO_MAX], start + done)
            except OSError as exc:  # ENOSPC on a full /dev/shm, say
                code = exc.errno
                raise InternalError(
                    f"failed to write to shared memory region '{self.name}': "
                    f"{errno.errorcode.get(code, code) if code is not None else code}"
                ) from exc

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


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
        #: unregistered while in use; closed when their last lease is released
        self._retired: list[Region] = []
        #: pins and closes are atomic: a request parsed on a worker thread pins its region
        #: while the loop may unregister it, and a descriptor closed between the two could be
        #: reused by another file
        self._lock = threading.Lock()

    # ---- registration ----------------------------------------------------------------------

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Open POSIX shm object ``key`` and register ``byte_size`` bytes at ``offset`` of it
        as region ``name``."""
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
        except BaseException:
            os.close(fd)
            raise
        self._regions[name] = Region(name, key, offset, byte_size, fd)
        log.debug("registered shared memory region '%s' (%s, %d bytes)", name, key, byte_size)

    def unregister(self, name: str = "") -> None:
        """Unregister region ``name``, or every region when ``name`` is empty.

        An unknown name is a no-op (as in Triton). A region in use by an in-flight request
        disappears from the manager now and is closed when that request finishes.
        """
        with self._lock:
            names = [name] if name else list(self._regions)
            for n in names:
                region = self._regions.pop(n, None)
                if region is None:
                    continue
                region.retired = True
                if region.users:
                    self._retired.append(region)
                else:
                    region.close()

    def regions(self) -> list[Region]:
        """The registered regions, in registration order."""
        return list(self._regions.values())

    def status(self, name: str = "") -> list[RegionStatus]:
        """``GET /v2/systemsharedmemory[/region/{name}]/status``."""
        if not name:
            return [r.status() for r in self._regions.values()]
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find system shared memory region: '{name}'")
        return [region.status()]

    def close(self) -> int:
        """Unregister everything (server stop); returns how many regions were released."""
        with self._lock:
            regions = list(self._regions.values()) + self._retired
            self._regions.clear()
            self._retired.clear()
            for region in regions:
                region.retired = True
                region.close()
        return len(regions)

    def __len__(self) -> int:
        return len(self._regions)

    # ---- access ----------------------------------------------------------------------------

    def _pin(self, name: object) -> Region:
        """The region ``name``, held open until :meth:`_release`."""
        with self._lock:
            region = self._regions.get(name) if isinstance(name, str) else None
            if region is None:
                raise NotFound(f"Unable to find shared memory region: '{name}'")
            region.users += 1
            return region

    def lease(self) -> ShmLease:
        """A lease for one request: what it reads or reserves stays open until release."""
        return ShmLease(self)

    def _release(self, region: Region) -> None:
        with self._lock:
            region.users -= 1
            if region.retired and region.users == 0:
                region.close()
                if region in self._retired:
                    self._retired.remove(region)


def write_region(
    region: Region, offset: int, size: int, data: bytes | memoryview, output: str
) -> None:
    """Copy ``data`` (an output's wire bytes) into ``size`` bytes at ``offset`` of ``region``."""
    region.bounds(offset, size)
    n = len(data) if not isinstance(data, memoryview) else data.nbytes
    if n > size:
        raise InternalError(
            f"shared memory size specified with the request for output '{output}' ({size} "
            f"bytes) should be at least {n} bytes to hold the results"
        )
    region.write(offset, size, data)


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
        region = self._manager._pin(name)
        self._held[region.name] = region
        return region

    def read(self, name: str, offset: int, size: int) -> memoryview:
        """``size`` bytes at ``offset`` of region ``name``, copied out once (read-only).

        The model sees a snapshot the client cannot change mid-request, and an unregistered
        region is closed at once, whoever still holds the input arrays.
        """
        return memoryview(self._pin(name).read(offset, size))

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
