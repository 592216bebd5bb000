"""Memory given back to the system after large requests.

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
import time

log = logging.getLogger(__name__)

#: requests with bodies at least this large trim afterwards
TRIM_FROM = 4 << 20
#: the wait after the request, so that its objects (and its answer's bytes) are freed first
_DELAY = 0.5
_MIN_INTERVAL = 1.0


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()
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
