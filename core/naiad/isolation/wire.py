"""Messages between the server and an instance process: pickles whose large arrays travel
through POSIX shared memory instead of the socket.

A numeric array of at least :data:`SHM_THRESHOLD` bytes is copied once into a fresh segment
(``/dev/shm/<prefix>-<n>``); the message carries only its name, dtype and shape. The receiver maps
the segment, unlinks it at once (the mapping stays valid) and gets a numpy view of it: no copy on
that side, and the memory goes back to the system when the array is garbage-collected. Segments
a dead process never received are removed by name prefix (:func:`remove_segments`).
"""

from __future__ import annotations

import io
import itertools
import mmap
import os
import pickle
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

#: arrays smaller than this travel inside the pickle
SHM_THRESHOLD = 64 * 1024
SHM_DIR = Path("/dev/shm")
#: map every page at once (one kernel call instead of a fault per 4 KiB page)
_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


def _from_segment(name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    path = SHM_DIR / name
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        mapped = mmap.mmap(fd, size, flags=_FLAGS) if size else None
    finally:
        os.close(fd)
        os.unlink(path)
    if mapped is None:
        return np.empty(shape, dtype=np.dtype(dtype))
    return np.frombuffer(mapped, dtype=np.dtype(dtype)).reshape(shape)


class _Pickler(pickle.Pickler):
    """Large numeric arrays by shared-memory reference, everything else as usual."""

    def __init__(self, buffer: io.BytesIO, channel: Channel) -> None:
        super().__init__(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        self.channel = channel

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is np.ndarray and obj.dtype.kind in "biuf" and obj.nbytes >= SHM_THRESHOLD:
            return _from_segment, self.channel._to_segment(obj)
        return NotImplemented


class Channel:
    """One end of the socket to the other process: thread-safe sends, one reader."""

    def __init__(self, conn: Connection, prefix: str) -> None:
        self.conn = conn
        self.prefix = prefix
        self._send_lock = threading.Lock()
        self._names = itertools.count()

    def _to_segment(self, array: np.ndarray) -> tuple[str, str, tuple[int, ...]]:
        name = f"{self.prefix}-{next(self._names)}"
        data = np.ascontiguousarray(array)
        fd = os.open(SHM_DIR / name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, data.nbytes)
            with mmap.mmap(fd, data.nbytes, flags=_FLAGS) as mapped:
                np.frombuffer(mapped, dtype=data.dtype).reshape(data.shape)[...] = data
        finally:
            os.close(fd)
        return name, data.dtype.str, data.shape

    def send(self, message: Any) -> None:
        buffer = io.BytesIO()
        _Pickler(buffer, self).dump(message)
        with self._send_lock:
            self.conn.send_bytes(buffer.getbuffer())

    def recv(self) -> Any:
        """The next message; raises EOFError / OSError when the other side is gone."""
        return pickle.loads(self.conn.recv_bytes())


def remove_segments(prefix: str) -> int:
    """Remove the segments named ``<prefix>-*`` (left by a process that died); their count."""
    removed = 0
    for path in SHM_DIR.glob(f"{prefix}-*"):
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    return removed
