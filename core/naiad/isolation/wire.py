"""Messages between the server and an instance process: pickles whose large arrays travel
through POSIX shared memory instead of the socket.

A numeric array of at least :data:`SHM_THRESHOLD` bytes is copied once into a segment
(``/dev/shm/<prefix>-<n>``) the sender owns; the message carries only its name, dtype and shape.
The receiver maps the segment and gets a numpy view of it: no copy on that side. When the last
array over it is garbage-collected the segment goes back to its owner, which reuses it (a fresh
segment per tensor costs page allocation, ~30x a copy). A channel's segments are removed when it
closes, and by name prefix after a process died (:func:`remove_segments`).

An array that is itself a view of a segment the other side owns (a model answering with its
input, or a slice of it) is not copied back: the message names the owner's segment and where
in it, and the owner gets a view of its own memory. The owner reuses such a segment only when
the other side has released it and its own views of it are gone too.
"""

from __future__ import annotations

import collections
import io
import itertools
import logging
import math
import mmap
import os
import pickle
import socket
import struct
import threading
import weakref
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

#: arrays smaller than this travel inside the pickle
SHM_THRESHOLD = 64 * 1024
log = logging.getLogger(__name__)
SHM_DIR = Path("/dev/shm")
#: map every page at once (one kernel call instead of a fault per 4 KiB page)
_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


_receiving = threading.local()

#: the frame header of :class:`multiprocessing.connection.Connection`: the length, or -1 and
#: a 64-bit length after it
_HEADER = struct.Struct("!i")
_LONG = struct.Struct("!Q")
#: the call id a fast-socket frame starts with, outside the pickle: a message that cannot be
#: read still names the execution it belongs to (which then fails instead of waiting forever)
CALL_ID = struct.Struct("!Q")


def frame(data: memoryview, call_id: int | None = None) -> bytes:
    """``data`` framed as ``Connection.send_bytes`` frames it (after ``call_id``, if given)."""
    tag = b"" if call_id is None else CALL_ID.pack(call_id)
    n = len(tag) + len(data)
    if n > 0x7FFFFFFF:
        return _HEADER.pack(-1) + _LONG.pack(n) + tag + bytes(data)
    return _HEADER.pack(n) + tag + bytes(data)


class Unreadable(Exception):
    """A tagged frame whose message could not be decoded (what the reader yields in its
    place, with the frame's call id)."""


def _from_segment(name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Unpickling a shared-memory array: a view of the other side's segment (mapped once per
    segment and kept: the owner reuses its segments, and mapping costs ~3x the copy). When the
    last array over it is gone, the segment's name goes back to its owner for reuse."""
    channel: Channel = _receiving.channel
    mapped = channel._mapped.get(name)
    if mapped is None:
        fd = os.open(SHM_DIR / name, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            mapped = mmap.mmap(fd, size, flags=_FLAGS)
        finally:
            os.close(fd)
        channel._mapped[name] = mapped
        channel._peer[id(mapped)] = (name, _address(mapped))
    # ``whole`` is the base of the view returned, alive exactly as long as some array over it
    whole = np.frombuffer(mapped, dtype=np.dtype(dtype), count=math.prod(shape))
    weakref.finalize(whole, channel._released.append, name)
    return whole.reshape(shape)


def _in_own_segment(name: str, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Unpickling an array the other side sent back as a view of one of this side's own
    segments: a view of it here too (no copy); the segment is not reused while it lives."""
    channel: Channel = _receiving.channel
    with channel._pool_lock:
        owned = channel._owned.get(name)
        if owned is None:
            raise ValueError(f"an answer names segment {name}, which is not this side's")
        channel._borrowed[name] = channel._borrowed.get(name, 0) + 1
    whole = np.frombuffer(owned[1], dtype=np.dtype(dtype), count=math.prod(shape), offset=offset)
    weakref.finalize(whole, channel._give_back, name)
    return whole.reshape(shape)


def _address(mapped: mmap.mmap) -> int:
    """Where ``mapped`` starts in this process's memory."""
    return np.frombuffer(mapped, dtype=np.uint8, count=1).ctypes.data


def _buffer_owner(array: np.ndarray) -> Any:
    """The object whose memory ``array`` is a view of (an mmap for a segment's arrays)."""
    base: Any = array
    while isinstance(base, np.ndarray):
        if base.base is None:
            return None
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


class _Pickler(pickle.Pickler):
    """Numeric arrays by shared-memory reference when large, else as ``np.ndarray(shape,
    dtype, bytearray)``: rebuilt by the unpickler in C with no Python frame, writable (half the
    cost of numpy's own reduction). Only exact ``np.ndarray`` objects are looked up (the
    pickler's ``dispatch_table``: no Python call for the tuples, lists and dicts around them);
    everything else as usual."""

    def __init__(self, buffer: io.BytesIO, channel: Channel) -> None:
        super().__init__(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        self.channel = channel
        self.dispatch_table = {np.ndarray: self._array}

    def _array(self, obj: np.ndarray) -> Any:
        if obj.dtype.kind not in "biuf":  # strings, objects: numpy's own reduction
            return obj.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        if obj.nbytes >= SHM_THRESHOLD:
            peer = self.channel._peer.get(id(_buffer_owner(obj)))
            if peer is not None and obj.flags.c_contiguous:  # the other side's own memory
                name, start = peer
                offset = obj.ctypes.data - start
                return _in_own_segment, (name, offset, obj.dtype.str, obj.shape)
            return _from_segment, self.channel._to_segment(obj)
        return np.ndarray, (obj.shape, obj.dtype.str, bytearray(obj.tobytes()))


class Channel:
    """One end of the socket to the other process: thread-safe sends, one reader.

    Each side owns the segments it writes (named ``<prefix>-<n>``, sized in powers of two) and
    reuses one only after the other side released it: the names of released segments ride back
    on the next message.
    """

    def __init__(self, conn: Connection, prefix: str) -> None:
        self.conn = conn
        self.prefix = prefix
        self._send_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._names = itertools.count()
        #: capacity -> this side's segments free for reuse
        self._free: dict[int, list[tuple[str, mmap.mmap]]] = {}
        #: every segment this side owns: name -> (capacity, mapping)
        self._owned: dict[str, tuple[int, mmap.mmap]] = {}
        #: names of the other side's segments this side is done with
        self._released: collections.deque[str] = collections.deque()
        #: the other side's segments, mapped here: name -> mapping
        self._mapped: dict[str, mmap.mmap] = {}
        #: the same by mapping: id(mapping) -> (name, address here), to send a view back as one
        self._peer: dict[int, tuple[str, int]] = {}
        #: this side's segments with views of them here that the other side sent back: name ->
        #: how many (under _pool_lock); one released by the other side waits in _held meanwhile
        self._borrowed: dict[str, int] = {}
        self._held: set[str] = set()
        #: the pickler :meth:`framed` reuses, over its buffer
        self._encoding = threading.Lock()
        self._buffer = io.BytesIO()
        self._pickler = _Pickler(self._buffer, self)

    def _to_segment(self, array: np.ndarray) -> tuple[str, str, tuple[int, ...]]:
        data = np.ascontiguousarray(array)
        capacity = 1 << max(data.nbytes - 1, 1).bit_length()
        with self._pool_lock:
            free = self._free.get(capacity)
            name, mapped = free.pop() if free else (None, None)
        if name is None or mapped is None:
            name = f"{self.prefix}-{next(self._names)}"
            fd = os.open(SHM_DIR / name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            try:
                os.ftruncate(fd, capacity)
                mapped = mmap.mmap(fd, capacity, flags=_FLAGS)
            finally:
                os.close(fd)
            with self._pool_lock:
                self._owned[name] = (capacity, mapped)
        target = np.frombuffer(mapped, dtype=data.dtype, count=data.size)
        target[...] = data.reshape(-1)
        del target
        return name, data.dtype.str, data.shape

    def _reuse(self, names: list[str]) -> None:
        with self._pool_lock:
            for name in names:
                if name in self._borrowed:  # views of it here still live
                    self._held.add(name)
                    continue
                owned = self._owned.get(name)
                if owned is not None:
                    self._free.setdefault(owned[0], []).append((name, owned[1]))

    def _give_back(self, name: str) -> None:
        """A view here of this side's own ``name``, sent back by the other side, is gone (any
        thread): the segment is free again if the other side released it too."""
        with self._pool_lock:
            left = self._borrowed.get(name, 0) - 1
            if left > 0:
                self._borrowed[name] = left
                return
            self._borrowed.pop(name, None)
            if name not in self._held:  # the other side still uses it: it says when it's done
                return
            self._held.discard(name)
            owned = self._owned.get(name)
            if owned is not None:
                self._free.setdefault(owned[0], []).append((name, owned[1]))

    def _take_released(self) -> list[str]:
        released = []
        while self._released:
            try:
                released.append(self._released.popleft())
            except IndexError:
                break
        return released

    def encode(self, message: Any) -> memoryview:
        """``message`` as bytes for the other side (large arrays copied into segments)."""
        buffer = io.BytesIO()
        _Pickler(buffer, self).dump((self._take_released(), message))
        return buffer.getbuffer()

    def framed(self, message: Any, call_id: int | None = None) -> bytes:
        """``message`` encoded and framed as ``Connection.send_bytes`` frames it, ready to
        write; with ``call_id``, that comes first in the frame (a tagged frame, for a
        :class:`FrameReader` made with ``tagged=True``). One pickler and buffer serve every
        call (a fresh pickler costs as much as a small message); a call that finds them busy
        on another thread makes its own."""
        if not self._encoding.acquire(blocking=False):
            return frame(self.encode(message), call_id)
        try:
            buffer, pickler = self._buffer, self._pickler
            head = _HEADER.size if call_id is None else _HEADER.size + CALL_ID.size
            buffer.seek(0)
            buffer.truncate()
            buffer.write(bytes(head))
            pickler.clear_memo()
            pickler.dump((self._take_released(), message))
            n = buffer.tell() - _HEADER.size
            if n > 0x7FFFFFFF:
                return frame(buffer.getbuffer()[head:], call_id)
            view = buffer.getbuffer()
            _HEADER.pack_into(view, 0, n)
            if call_id is not None:
                CALL_ID.pack_into(view, _HEADER.size, call_id)
            view.release()
            return buffer.getvalue()
        finally:
            self._encoding.release()

    def decode(self, data: bytes | memoryview) -> Any:
        """A message the other side encoded (on the thread that will drop its arrays' views)."""
        _receiving.channel = self
        released, message = pickle.loads(data)
        if released:
            self._reuse(released)
        return message

    def send(self, message: Any, call_id: int | None = None) -> None:
        data = self.framed(message, call_id)
        fd = self.conn.fileno()
        with self._send_lock:
            while data:  # one write for a message of a few KiB
                sent = os.write(fd, data)
                data = data[sent:]

    def recv(self) -> Any:
        """The next message; raises EOFError / OSError when the other side is gone."""
        return self.decode(self.conn.recv_bytes())

    def close(self) -> None:
        """Close the socket and remove this side's segments (mappings over them stay valid)."""
        self.conn.close()
        self._mapped, self._peer = {}, {}  # arrays over them keep their mappings
        with self._pool_lock:
            owned, self._owned, self._free = self._owned, {}, {}
        for name in owned:
            try:
                os.unlink(SHM_DIR / name)
            except OSError:
                pass


class FrameReader:
    """The messages of a socket read into one reused buffer, framed incrementally: one
    ``read`` syscall takes every message that arrived (``Connection.recv_bytes`` makes two
    per message).

    ``tagged``: each frame starts with a call id (:meth:`Channel.framed` with ``call_id``) and
    the reader yields ``(call_id, message)``; a message that cannot be decoded comes as an
    :class:`Unreadable` in its place, so that its call can fail."""

    def __init__(
        self, fd: int, channel: Channel, label: str, size: int = 1 << 18, tagged: bool = False
    ) -> None:
        self.fd = fd
        self.channel = channel
        self.label = label
        self.tagged = tagged
        self._buffer = bytearray(size)
        self._view = memoryview(self._buffer)
        self._in = b""
        #: a duplicate of ``fd`` for reads that must not wait on a blocking socket
        self._sock: socket.socket | None = None

    def read(self, wait: bool = True) -> list[Any] | None:
        """The messages complete after one read (maybe none); None at the end of the stream.
        Raises BlockingIOError when the socket has nothing and ``wait`` is false (or the
        socket is non-blocking)."""
        try:
            if wait:
                got = os.readv(self.fd, (self._buffer,))
            else:
                if self._sock is None:
                    self._sock = socket.socket(fileno=os.dup(self.fd))
                got = self._sock.recv_into(self._buffer, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            raise
        except OSError:
            got = 0
        if not got:
            return None
        if self._in:  # the start of a message came with the last read
            buf: bytes | memoryview = self._in + self._view[:got]
        else:  # decoded in place, before the next read reuses the buffer
            buf = self._view[:got]
        view = memoryview(buf)
        pos, end = 0, len(buf)
        messages = []
        while end - pos >= 4:
            (n,) = _HEADER.unpack_from(buf, pos)
            head = 4
            if n < 0:
                if end - pos < 12:
                    break
                (n,) = _LONG.unpack_from(buf, pos + 4)
                head = 12
            if end - pos < head + n:
                break
            start = pos + head
            pos = start + n
            if self.tagged:
                if n < CALL_ID.size:
                    log.error("a frame from %s too short for its call id: dropped", self.label)
                    continue
                (call_id,) = CALL_ID.unpack_from(buf, start)
                try:
                    message = self.channel.decode(view[start + CALL_ID.size : pos])
                except Exception as exc:
                    log.exception("a message from %s could not be read", self.label)
                    message = Unreadable(f"{type(exc).__name__}: {exc}")
                messages.append((call_id, message))
                continue
            try:
                messages.append(self.channel.decode(view[start:pos]))
            except Exception:  # a bug: the rest of the stream still gets read
                log.exception("a message from %s could not be read", self.label)
        self._in = bytes(buf[pos:]) if pos < end else b""
        return messages

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def remove_segments(prefix: str) -> int:
    """Remove the segments whose names start with ``prefix`` (left by a process that died, or
    at the end of a channel); their count."""
    removed = 0
    for path in SHM_DIR.glob(f"{prefix}*"):
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    return removed
