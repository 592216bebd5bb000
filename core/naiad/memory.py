"""The C allocator: tuned for tensors at start, and memory given back after large requests.

glibc's defaults suit small programs, not a server that allocates a few buffers of hundreds of
KiB for every request: a block over 128 KiB is a fresh ``mmap`` (its pages faulted in anew each
time), and free memory at the top of a heap over a similar size is handed back at once, to be
faulted in again by the next request. With a 600 KB tensor that was ~800 page faults a request
and most of its time (a 3x224x224 FP32 identity: 340 -> 1,030 infer/s over gRPC, 660 -> 1,490
over HTTP once tuned, measured with glibc's environment variables on a shared machine).
:func:`tune_allocator` (called when a server or an instance process starts) keeps blocks below
:data:`MMAP_THRESHOLD` in the heaps and free memory up to :data:`TRIM_THRESHOLD` for reuse,
unless the user set glibc's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``.

A large request leaves freed memory behind in the C allocator: glibc keeps freed heap memory
for reuse, so a server that once decoded a 50 MB JSON body kept most of a gigabyte resident
while idle. After a large request :func:`trim_soon` asks glibc (``malloc_trim``) to return what
is free, once the request's objects are gone, on a worker thread, at most once a second. Where
the C library is not glibc nothing happens.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import time

log = logging.getLogger(__name__)

#: requests with bodies at least this large trim afterwards
TRIM_FROM = 4 << 20
#: the wait after the request, so that its objects (and its answer's bytes) are freed first
_DELAY = 0.5
_MIN_INTERVAL = 1.0


#: blocks below this size come from the heaps instead of a fresh mapping; larger ones (a big
#: body, a connection's buffer) are still mapped, so their memory goes back as soon as it is freed
MMAP_THRESHOLD = 4 << 20
#: free memory at a heap's top kept for reuse below this size (larger is trimmed at once)
TRIM_THRESHOLD = 32 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def _glibc(name: str):
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _glibc("malloc_trim")
_MALLOPT = _glibc("mallopt")


def tune_allocator() -> bool:
    """Set glibc's thresholds for a server's allocations (once per process, at start); False
    where the C library is not glibc or the user chose the thresholds through glibc's own
    environment variables."""
    if _MALLOPT is None:
        return False
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    ok = _MALLOPT(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = _MALLOPT(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    if not ok:
        log.debug("mallopt refused the allocator thresholds")
    return ok


_state = {"scheduled": False, "last": 0.0, "collect": False}


def trim_soon(collect: bool = False) -> None:
    """Return freed memory to the system shortly (call on the event loop).

    ``collect``: first free what only reference cycles hold — a request that failed while its
    body was read leaves it in one (its exception, traceback and frames), which the cyclic
    collector may not visit for a long time since few objects were allocated meanwhile.
    """
    _state["collect"] = _state["collect"] or collect
    if _state["scheduled"] or (_TRIM is None and not _state["collect"]):
        return
    _state["scheduled"] = True
    loop = asyncio.get_running_loop()
    wait = max(_DELAY, _state["last"] + _MIN_INTERVAL - time.monotonic())
    loop.call_later(wait, lambda: loop.run_in_executor(None, _trim))


def _trim() -> None:
    try:
        if _state["collect"]:
            _state["collect"] = False
            gc.collect()
        if _TRIM is not None:
            _TRIM(0)
    finally:
        _state["last"] = time.monotonic()
        _state["scheduled"] = False
