"""The server's side of an instance process: start it, talk to it, outlive it.

:class:`InstanceProcess` runs one backend object in ``python -m naiad.isolation.child``. The
instance thread sends an execution and waits; a reader thread takes the child's messages: results,
decoupled sends (forwarded to the request's :class:`~naiad.streaming.ResponseStream`) and calls
the model makes into the server (BLS, model control, custom metrics; served on a small pool so a
slow BLS call never stalls the reader). When the child dies (a segfault, ``os._exit``, the OOM
killer) its in-flight requests fail with an error that says how it ended, the cause is logged, and
the child is restarted; after :data:`MAX_CRASHES` deaths within :data:`CRASH_WINDOW_S` seconds the
instance stays down and its model is marked UNAVAILABLE with the reason.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import CustomInstance, InferenceBackend, InstanceContext
from ..config import ModelConfig
from ..errors import InternalError, ModelLoadError, NaiadError, Unavailable
from ..inference import InferRequest
from ..scheduling.worker import DaemonPool
from ..streaming import ResponseStream
from .wire import Channel, remove_segments

log = logging.getLogger(__name__)

MAX_CRASHES = 3
CRASH_WINDOW_S = 60.0
#: how long an execution waits for a restarting child
RESTART_WAIT_S = 120.0
_generations = itertools.count(1)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "an unknown status"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"signal {name} ({-code})"
    return f"exit code {code}"


def _spawn(env: Mapping[str, str] | None, label: str) -> tuple[subprocess.Popen, Channel, str]:
    """A fresh child process and the channel to it."""
    base = f"naiad-{os.getpid()}-{next(_generations)}-"
    parent_sock, child_sock = socket.socketpair()
    command = [sys.executable, "-m", "naiad.isolation.child", str(child_sock.fileno()), base + "c"]
    try:
        proc = subprocess.Popen(
            command, pass_fds=[child_sock.fileno()], env=dict(env) if env is not None else None
        )
    except OSError as exc:
        parent_sock.close()
        raise ModelLoadError(f"cannot start the process of {label}: {exc}") from exc
    finally:
        child_sock.close()
    channel = Channel(Connection(parent_sock.detach()), base + "p")
    return proc, channel, base


def _spec(
    backend_cls: type, config: ModelConfig, model_path: Path, version_path: Path, ctx: Any
) -> dict[str, Any]:
    from ..logs import get_settings

    return {
        "module": backend_cls.__module__,
        "qualname": backend_cls.__qualname__,
        "config": config.SerializeToString(),
        "model_path": str(model_path),
        "version_path": str(version_path),
        "instance": (ctx.name, ctx.kind, ctx.device_id) if ctx is not None else ("", "", -1),
        "log": get_settings(),
    }


def _first_reply(proc: subprocess.Popen, channel: Channel, label: str) -> Any:
    try:
        return channel.recv()
    except (EOFError, OSError):
        code = proc.wait()
        raise ModelLoadError(f"the process of {label} exited with {describe_exit(code)}") from None


def run_auto_complete(
    backend_cls: type, config: ModelConfig, version_path: Path, env: Mapping[str, str] | None
) -> None:
    """``backend_cls.auto_complete_config`` in a throw-away process, as Triton does it."""
    label = f"the auto-complete of model '{config.name}'"
    proc, channel, base = _spawn(env, label)
    try:
        channel.send(
            ("auto_complete", _spec(backend_cls, config, version_path.parent, version_path, None))
        )
        reply = _first_reply(proc, channel, label)
        if reply[0] == "init_error":
            raise reply[1]
        completed = ModelConfig()
        completed.ParseFromString(reply[1])
        config.CopyFrom(completed)
    finally:
        channel.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        remove_segments(base)


class _Waiter:
    __slots__ = ("event", "value", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def done(self, value: Any, error: BaseException | None) -> None:
        self.value, self.error = value, error
        self.event.set()


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
        self.spec = _spec(backend_cls, config, model_path, version_path, ctx)
        self.env = env
        self.host = ctx.host
        self.model = config.name
        self.version = int(version_path.name) if version_path.name.isdigit() else -1
        self.name = ctx.name
        self.label = f"instance '{ctx.name}' of model '{config.name}'"
        self._lock = threading.Lock()
        self._pending: dict[int, _Waiter] = {}
        self._streams: dict[int, ResponseStream] = {}
        self._bls_cancels: dict[int, Any] = {}
        self._ids = itertools.count(1)
        self._proc: subprocess.Popen | None = None
        self._channel: Channel | None = None
        self._base = ""
        self._alive = threading.Event()
        self._finalized = threading.Event()
        self._crashes: collections.deque[float] = collections.deque()
        self._failed = ""
        self._stopping = False
        self._init: _Waiter | None = None
        #: the child's backend has a readiness check of its own (a Triton model's is_ready)
        self.checks_readiness = False
        self._pool = DaemonPool(f"naiad-{ctx.name}-calls")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # ---- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the child and build the backend object there (blocking)."""
        proc, channel, base = _spawn(self.env, self.label)
        ready = _Waiter()
        self._init = ready
        # the reader serves the child from the start: initialize may call the server
        reader = threading.Thread(
            target=self._read,
            args=(proc, channel, base),
            name=f"naiad-{self.name}-reader",
            daemon=True,
        )
        reader.start()
        try:
            channel.send(("init", self.spec))
        except OSError:
            pass  # the reader sees it die
        ready.event.wait()
        if ready.error is not None:
            channel.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            remove_segments(base)
            error = ready.error
            raise error if isinstance(error, NaiadError) else ModelLoadError(str(error))
        with self._lock:
            self._proc, self._channel, self._base = proc, channel, base
        self._alive.set()
        log.info("%s runs in process %d", self.label, proc.pid)

    def stop(self) -> None:
        self._stopping = True
        channel, proc = self._channel, self._proc
        if channel is not None and proc is not None and proc.poll() is None:
            try:
                channel.send(("finalize",))
                self._finalized.wait(10)
            except OSError:
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if channel is not None:
            channel.close()
        if self._base:
            remove_segments(self._base)
        self._pool.shutdown()

    # ---- executions (the instance thread) -------------------------------------------------------

    def execute_requests(self, requests: Sequence[InferRequest]) -> list[Any]:
        keys: list[int | None] = []
        copies = []
        for r in requests:
            key = None
            if r.stream is not None:
                key = next(self._ids)
                self._streams[key] = r.stream
                r.stream.on_cancel(lambda k=key: self._send_quietly(("cancel", k)))
            keys.append(key)
            copies.append(dataclasses.replace(r, plan=None, stream=None))
        try:
            return self._call("exec", copies, keys)
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
            waiter = _Waiter()
            with self._lock:
                if not self._alive.is_set():
                    continue  # it died just now: wait for the restart
                call_id = next(self._ids)
                self._pending[call_id] = waiter
                channel = self._channel
            assert channel is not None
            try:
                channel.send((kind, call_id, *payload))
            except OSError:
                pass  # the reader sees the death and fails the waiter
            waiter.event.wait()
            if waiter.error is not None:
                raise waiter.error
            return waiter.value

    def not_ready_reason(self) -> str:
        """Triton's answer for a stub process that is not running (dead, restarting, given up)."""
        if self._failed or not self._alive.is_set():
            return f"Stub process '{self.name}' is not healthy."
        return ""

    def check_ready(self) -> None:
        """The child's own readiness check (blocking; fails at once when the child is down)."""
        waiter = _Waiter()
        with self._lock:
            reason = self.not_ready_reason()
            if reason:
                raise Unavailable(reason)
            call_id = next(self._ids)
            self._pending[call_id] = waiter
            channel = self._channel
        assert channel is not None
        try:
            channel.send(("is_ready", call_id))
        except OSError:
            pass  # the reader sees the death and fails the waiter
        waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error

    def _send_quietly(self, message: Any) -> None:
        channel = self._channel
        if channel is not None:
            try:
                channel.send(message)
            except OSError:
                pass

    # ---- the reader thread ----------------------------------------------------------------------

    def _read(self, proc: subprocess.Popen, channel: Channel, base: str) -> None:
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
            code = proc.wait()
            init.done(
                None,
                ModelLoadError(f"the process of {self.label} exited with {describe_exit(code)}"),
            )
            return
        if not self._stopping:
            self._died(proc, base)

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
            self._pool.submit(self._serve_call, channel, *message[1:])
        elif kind == "stream_call":
            self._pool.submit(self._serve_stream, channel, message[1], message[2])
        elif kind == "bls_cancel":
            cancel = self._bls_cancels.pop(message[1], None)
            if cancel is not None:
                cancel()
        elif kind == "finalized":
            self._finalized.set()

    def _serve_call(self, channel: Channel, call_id: int, method: str, args: tuple) -> None:
        host = self.host
        try:
            if host is None:
                raise Unavailable("this instance has no server to call")
            if method == "infer":
                value = host.run_infer(args[0])
            elif method == "metric":
                value = getattr(host.metrics, args[0])(*args[1])
            elif method in ("load_model", "unload_model", "is_model_ready"):
                value = getattr(host, method)(*args)
            else:
                raise InternalError(f"unknown call '{method}'")
            ok = True
        except NaiadError as exc:
            ok, value = False, exc
        except Exception as exc:
            ok, value = False, InternalError(f"{type(exc).__name__}: {exc}")
        try:
            channel.send(("reply", call_id, ok, value))
        except OSError:
            pass

    def _serve_stream(self, channel: Channel, call_id: int, request: InferRequest) -> None:
        try:
            if self.host is None:
                raise Unavailable("this instance has no server to call")
            items, cancel = self.host.run_infer_stream(request)
            self._bls_cancels[call_id] = cancel
            for response in items:
                channel.send(("bls_item", call_id, response, None, response.final))
                if response.final:
                    return
            channel.send(("bls_item", call_id, None, None, True))
        except NaiadError as exc:
            self._send_quietly(("bls_item", call_id, None, exc, True))
        except OSError:
            pass
        finally:
            self._bls_cancels.pop(call_id, None)

    # ---- death and restart -----------------------------------------------------------------------

    def _died(self, proc: subprocess.Popen, base: str) -> None:
        code = proc.wait()
        cause = describe_exit(code)
        with self._lock:
            self._alive.clear()
            pending, self._pending = self._pending, {}
            streams, self._streams = self._streams, {}
        remove_segments(base)
        log.error("%s (process %d) exited unexpectedly with %s", self.label, proc.pid, cause)
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


class _Isolated:
    """What both wrappers share: the child process is the backend's load / unload / health."""

    process: InstanceProcess

    def load(self) -> None:
        self.process.start()

    def unload(self) -> None:
        self.process.stop()

    def not_ready_reason(self) -> str:
        return self.process.not_ready_reason()

    def readiness_check(self) -> Callable[[], None] | None:
        return self.process.check_ready if self.process.checks_readiness else None


class IsolatedBackend(_Isolated, InferenceBackend):
    """An :class:`InferenceBackend` running in a process of its own."""

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> Any:
        return self.process.execute(inputs, outputs)


class IsolatedCustomInstance(_Isolated, CustomInstance):
    """A :class:`CustomInstance` running in a process of its own."""

    def execute_requests(self, requests: Sequence[InferRequest]) -> list[Any]:
        return self.process.execute_requests(requests)


def make_isolated(
    backend_cls: type[InferenceBackend],
    config: ModelConfig,
    model_path: Path,
    version_path: Path,
    ctx: InstanceContext,
    env: Mapping[str, str] | None = None,
) -> InferenceBackend:
    """``backend_cls``'s instance, run in a child process."""
    wrapper: type[InferenceBackend] = (
        IsolatedCustomInstance if issubclass(backend_cls, CustomInstance) else IsolatedBackend
    )
    backend = wrapper(config, model_path, version_path, ctx)
    backend.process = InstanceProcess(  # type: ignore[attr-defined]
        backend_cls, config, model_path, version_path, ctx, env
    )
    return backend
