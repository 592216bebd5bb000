"""A single worker thread per model instance, with a cheap hand-off back to the event loop.

``loop.run_in_executor`` costs two futures and several callbacks per call; a model that answers
in 20 µs feels that. :class:`Worker` takes a plain callable and a completion callback, runs the
callable on its thread, and schedules the callback on the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

log = logging.getLogger(__name__)

_STOP = object()


class Worker:
    """One daemon thread that runs submitted callables in order."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._stopped = False

    def _run(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is _STOP:
                return
            fn, args, loop, callback = item
            try:
                result: Any = fn(*args)
                error: BaseException | None = None
            except BaseException as exc:  # handed to the callback; never kills the thread
                result, error = None, exc
            if loop is None:
                callback(result, error)
            else:
                try:
                    loop.call_soon_threadsafe(callback, result, error)
                except RuntimeError:  # the loop closed while we ran: nobody is waiting
                    pass
            # drop this job's references before waiting: a batch's tensors must not stay
            # alive in an idle worker
            item = fn = args = callback = result = error = None

    def call_soon(
        self,
        loop: asyncio.AbstractEventLoop | None,
        callback: Callable[[Any, BaseException | None], None],
        fn: Callable[..., Any],
        *args: Any,
    ) -> None:
        """Run ``fn(*args)`` on the worker; then ``callback(result, error)`` on ``loop``."""
        self._queue.put((fn, args, loop, callback))

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the worker and await its result."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def done(result: Any, error: BaseException | None) -> None:
            if fut.cancelled():
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)

        self.call_soon(loop, done, fn, *args)
        return await fut

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Thread-side API (for loading): a concurrent Future of ``fn(*args)``."""
        fut: Future = Future()

        def done(result: Any, error: BaseException | None) -> None:
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)

        self._queue.put((fn, args, None, done))
        return fut

    def shutdown(self, wait: bool = False) -> None:
        if not self._stopped:
            self._stopped = True
            self._queue.put(_STOP)
            if wait and threading.current_thread() is not self._thread:
                self._thread.join()


class DaemonPool:
    """Up to ``size`` daemon threads running submitted callables (started as needed).

    For calls that may block on the event loop (BLS, model control from model code): unlike
    :class:`concurrent.futures.ThreadPoolExecutor`, whose threads the interpreter joins at exit,
    a call stuck when the loop is gone never keeps the process from exiting.
    """

    def __init__(self, name: str, size: int = 8) -> None:
        self._name = name
        self._size = size
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = 0
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        fut: Future = Future()
        self._queue.put((fut, fn, args))
        with self._lock:
            start = self._idle == 0 and self._threads < self._size
            if start:
                self._threads += 1
        if start:
            threading.Thread(
                target=self._run, name=f"{self._name}-{self._threads}", daemon=True
            ).start()
        return fut

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._queue.get()
            with self._lock:
                self._idle -= 1
            if item is None:
                return
            fut, fn, args = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller
                fut.set_exception(exc)
            item = fut = fn = args = None

    def shutdown(self) -> None:
        with self._lock:
            count = self._threads
        for _ in range(count):
            self._queue.put(None)


def log_failure(_result: object, error: BaseException | None) -> None:
    """A callback for :meth:`Worker.call_soon` without a loop: log what the job raised."""
    if error is not None:
        log.error("instance thread failed", exc_info=error)
