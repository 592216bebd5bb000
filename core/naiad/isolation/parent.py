"""The server's side of an instance process: start it, talk to it, outlive it.

:class:`InstanceProcess` runs one backend object in ``python -m naiad.isolation.child``. Two
sockets lead to it. On the first, a reader thread takes the child's messages: results of
blocking executions (an instance thread sends one and waits), decoupled sends (forwarded to the
request's :class:`~naiad.streaming.ResponseStream`) and calls the model makes into the server
(BLS, model control, custom metrics; served on a small pool so a slow BLS call never stalls the
reader). On the second, the event loop itself writes executions and reads their results
(:meth:`InstanceProcess.submit`, :mod:`naiad.isolation.link`): the schedulers' fast path, with
no thread between the loop and the child.

When the child dies (a segfault, ``os._exit``, the OOM killer) its in-flight requests, on both
sockets, fail with an error that says how it ended, the cause is logged, and the child is
restarted; after :data:`MAX_CRASHES` deaths within :data:`CRASH_WINDOW_S` seconds the instance
stays down and its model is marked UNAVAILABLE with the reason.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import InstanceContext
from ..config import ModelConfig
from ..errors import InternalError, ModelLoadError, NaiadError, Unavailable
from ..inference import InferRequest
from ..scheduling.worker import DaemonPool
from ..streaming import ResponseStream
from .calls import serve_call, serve_stream
from .link import LoopLink
from .messages import pack_request, unpack_result
from .spawn import Spawned, Waiter, describe_exit, spawn, spec
from .wire import Channel, remove_segments

log = logging.getLogger(__name__)

MAX_CRASHES = 3
CRASH_WINDOW_S = 60.0
#: how long an execution waits for a restarting child
RESTART_WAIT_S = 120.0
#: executions whose inputs add up to more than this go through the instance thread: the loop
#: copies at most this much into shared memory per execution (~0.1 ms; the loop already did
#: more per byte receiving the request)
LOOP_COPY_LIMIT = 1 << 20


def _results(results: Any) -> Any:
    return None if results is None else [unpack_result(x) for x in results]


class InstanceProcess:
    """One instance's child process, its restarts, and the traffic in both directions."""

    def __init__(
        self,
        backend_cls: type,
        config: ModelConfig,
        model_path: Path,
        version_path: Path,
        ctx: InstanceContext,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.spec = spec(backend_cls, config, model_path, version_path, ctx)
        self.env = env
        self.host = ctx.host
        self.model = config.name
        self.version = int(version_path.name) if version_path.name.isdigit() else -1
        self.name = ctx.name
        self.label = f"instance '{ctx.name}' of model '{config.name}'"
        self._lock = threading.Lock()
        self._pending: dict[int, Waiter] = {}
        self._streams: dict[int, ResponseStream] = {}
        self._bls_cancels: dict[int, Any] = {}
        self._ids = itertools.count(1)
        self._child: Spawned | None = None
        self._alive = threading.Event()
        self._finalized = threading.Event()
        self._crashes: collections.deque[float] = collections.deque()
        self._failed = ""
        self._stopping = False
        self._init: Waiter | None = None
        #: the child's backend has a readiness check of its own (a Triton model's is_ready)
        self.checks_readiness = False
        self._pool = DaemonPool(f"naiad-{ctx.name}-calls")
        #: the loop that drives the fast sockets (set by the first :meth:`submit`, under _lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        #: child generation -> its loop link (loop only)
        self._links: dict[int, LoopLink] = {}

    @property
    def pid(self) -> int | None:
        return self._child.proc.pid if self._child is not None else None

    # ---- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the child and build the backend object there (blocking)."""
        child = spawn(self.env, self.label)
        ready = Waiter()
        self._init = ready
        # the reader serves the child from the start: initialize may call the server
        reader = threading.Thread(
            target=self._read, args=(child,), name=f"naiad-{self.name}-reader", daemon=True
        )
        reader.start()
        try:
            child.channel.send(("init", self.spec))
        except OSError:
            pass  # the reader sees it die
        ready.event.wait()
        if ready.error is not None:
            child.close()
            if child.proc.poll() is None:
                child.proc.kill()
            child.proc.wait()
            remove_segments(child.base)
            error = ready.error
            raise error if isinstance(error, NaiadError) else ModelLoadError(str(error))
        with self._lock:
            self._child = child
        self._alive.set()
        log.info("%s runs in process %d", self.label, child.proc.pid)

    def stop(self) -> None:
        self._stopping = True
        child = self._child
        if child is None:
            self._pool.shutdown()
            return
        proc = child.proc
        if proc.poll() is None:
            try:
                child.channel.send(("finalize",))
                self._finalized.wait(10)
            except OSError:
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        child.channel.close()
        self._retire(child, Unavailable(f"{self.label} was unloaded"))
        remove_segments(child.base)
        self._pool.shutdown()

    # ---- executions on the instance thread (blocking) -------------------------------------------

    def execute_requests(self, requests: Sequence[InferRequest]) -> list[Any]:
        keys: list[int | None] = []
        for r in requests:
            key = None
            if r.stream is not None:
                key = next(self._ids)
                self._streams[key] = r.stream
                r.stream.on_cancel(lambda k=key: self._send_quietly(("cancel", k)))
            keys.append(key)
        try:
            return _results(self._call("exec", [pack_request(r) for r in requests], keys))
        except BaseException:
            for key in keys:
                if key is not None:
                    self._streams.pop(key, None)
            raise

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict:
        return self._call("exec_batch", dict(inputs), list(outputs))

    def _call(self, kind: str, *payload: Any) -> Any:
        deadline = time.monotonic() + RESTART_WAIT_S
        while True:
            if self._failed:
                raise Unavailable(self._failed)
            if not self._alive.wait(max(deadline - time.monotonic(), 0)):
                raise Unavailable(f"{self.label} is restarting")
            waiter = Waiter()
            with self._lock:
                if not self._alive.is_set():
                    continue  # it died just now: wait for the restart
                call_id = next(self._ids)
                self._pending[call_id] = waiter
                child = self._child
            assert child is not None
            try:
                child.channel.send((kind, call_id, *payload))
            except OSError:
                pass  # the reader sees the death and fails the waiter
            waiter.event.wait()
            if waiter.error is not None:
                raise waiter.error
            return waiter.value

    # ---- executions from the event loop (the fast path) -----------------------------------------

    def submit(
        self,
        requests: Sequence[InferRequest],
        done: Callable[[list[Any] | None, BaseException | None], None],
    ) -> bool:
        """On the loop: send an execution to the child from here; ``done(results, error)`` runs
        on the loop when it answered (or died). False when it must go the blocking way instead:
        the child is down or restarting, a request is decoupled (its stream is forwarded by the
        reader), or the inputs are larger than :data:`LOOP_COPY_LIMIT`."""
        size = 0
        for r in requests:
            if r.stream is not None:
                return False
            for array in r.inputs.values():
                size += array.nbytes
        if size > LOOP_COPY_LIMIT:
            return False
        running = asyncio.get_running_loop()
        with self._lock:  # against _died: either it sees the loop, or we see it dead
            if not self._alive.is_set() or self._failed or self._child is None:
                return False
            child = self._child
            loop = self._loop
            if loop is None:
                loop = self._loop = running
            elif loop is not running:  # one loop drives the links (the server has one)
                return False
            call_id = next(self._ids)
        link = self._links.get(child.generation)
        if link is None:
            link = LoopLink(loop, child.fast, child.fast_channel, self.label)
            self._links[child.generation] = link
        packed = [pack_request(r) for r in requests]
        link.send(call_id, packed, lambda results, error: done(_results(results), error))
        return True

    def _retire(self, child: Spawned, error: BaseException) -> None:
        """``child``'s fast socket is done: fail what waits on it, close it on the loop."""
        with self._lock:
            loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._close_link, child, error)
                return
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass
        child.fast_channel.close()

    def _close_link(self, child: Spawned, error: BaseException) -> None:
        link = self._links.pop(child.generation, None)
        if link is None:
            child.fast_channel.close()
            return
        link.fail_all(error)
        link.close()

    # ---- readiness ------------------------------------------------------------------------------

    def not_ready_reason(self) -> str:
        """Triton's answer for a stub process that is not running (dead, restarting, given up)."""
        if self._failed or not self._alive.is_set():
            return f"Stub process '{self.name}' is not healthy."
        return ""

    def check_ready(self) -> None:
        """The child's own readiness check (blocking; fails at once when the child is down)."""
        waiter = Waiter()
        with self._lock:
            reason = self.not_ready_reason()
            if reason:
                raise Unavailable(reason)
            call_id = next(self._ids)
            self._pending[call_id] = waiter
            child = self._child
        assert child is not None
        try:
            child.channel.send(("is_ready", call_id))
        except OSError:
            pass  # the reader sees the death and fails the waiter
        waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error

    def _send_quietly(self, message: Any) -> None:
        child = self._child
        if child is not None:
            try:
                child.channel.send(message)
            except OSError:
                pass

    # ---- the reader thread ----------------------------------------------------------------------

    def _read(self, child: Spawned) -> None:
        channel = child.channel
        while True:
            try:
                message = channel.recv()
            except (EOFError, OSError):
                break
            try:
                self._dispatch(channel, message)
            except Exception:  # a bug here must not stop the reader
                log.exception("handling a message from %s failed", self.label)
        init, self._init = self._init, None
        if init is not None:  # it died while starting
            code = child.proc.wait()
            init.done(
                None,
                ModelLoadError(f"the process of {self.label} exited with {describe_exit(code)}"),
            )
            return
        if not self._stopping:
            self._died(child)

    def _dispatch(self, channel: Channel, message: Any) -> None:
        kind = message[0]
        if kind in ("ready", "init_error"):
            init, self._init = self._init, None
            if kind == "ready":
                self.checks_readiness = message[1]
            if init is not None:
                init.done(None, message[1] if kind == "init_error" else None)
            return
        if kind == "result":
            with self._lock:
                waiter = self._pending.pop(message[1], None)
            if waiter is not None:
                waiter.done(message[2], message[3])
        elif kind == "stream":
            _, key, response, final, error = message
            stream = self._streams.pop(key) if final else self._streams.get(key)
            if stream is not None:
                try:
                    stream.send(response, final=final, error=error)
                except NaiadError:
                    pass
        elif kind == "call":
            self._pool.submit(serve_call, self.host, channel, *message[1:])
        elif kind == "stream_call":
            self._pool.submit(
                serve_stream, self.host, channel, self._bls_cancels, message[1], message[2]
            )
        elif kind == "bls_cancel":
            cancel = self._bls_cancels.pop(message[1], None)
            if cancel is not None:
                cancel()
        elif kind == "finalized":
            self._finalized.set()

    # ---- death and restart -----------------------------------------------------------------------

    def _died(self, child: Spawned) -> None:
        code = child.proc.wait()
        cause = describe_exit(code)
        with self._lock:
            self._alive.clear()
            pending, self._pending = self._pending, {}
            streams, self._streams = self._streams, {}
        child.channel.close()
        remove_segments(child.base)
        log.error("%s (process %d) exited unexpectedly with %s", self.label, child.proc.pid, cause)
        error = InternalError(
            f"Failed to process the request(s) for model instance '{self.name}', message: "
            f"Stub process '{self.name}' is not healthy: it exited with {cause}"
        )
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > CRASH_WINDOW_S:
            self._crashes.popleft()
        give_up = len(self._crashes) >= MAX_CRASHES
        if give_up:  # marked before the failed requests are answered
            self._give_up(
                f"{self.label} crashed {len(self._crashes)} times within "
                f"{CRASH_WINDOW_S:.0f} s (last: {cause})"
            )
        for waiter in pending.values():
            waiter.done(None, error)
        for stream in streams.values():
            stream.fail(error)
        self._retire(child, error)
        if give_up:
            return
        try:
            self.start()
            log.info("%s restarted", self.label)
        except Exception as exc:
            self._give_up(f"{self.label} could not be restarted: {exc}")

    def _give_up(self, reason: str) -> None:
        self._failed = reason
        self._alive.set()  # wake waiting executions: they fail with the reason
        log.error("%s", reason)
        mark = getattr(self.host, "instance_failed", None)
        if mark is not None:
            mark(self.model, self.version, reason)
