"""The instance process: ``python -m naiad.isolation.child <fd>``.

It builds one backend object (any naiad backend class, by import path), then serves the parent's
messages: executions run one at a time on an execution thread while this process's main thread
keeps reading, so BLS replies, decoupled cancellations and the parent's other messages arrive
during an execution. What model code asks of the server (BLS, model control, custom metrics) and
a decoupled model's sends go back over the same socket (:class:`ChildHost`, :class:`ChildStream`).
"""

from __future__ import annotations

import importlib
import itertools
import logging
import os
import queue
import select
import sys
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .. import memory
from ..backend import CustomInstance, InferenceBackend, InstanceContext
from ..config import ModelConfig
from ..errors import InternalError, ModelLoadError, NaiadError
from ..inference import InferRequest, InferResponse
from ..scheduling.custom_outputs import check_custom_outputs
from ..signature import Signature
from ..streaming import StreamClosed
from ..tritonpy.host import Host, install_default
from .messages import pack_result, unpack_request
from .wire import Channel, FrameReader, Unreadable

log = logging.getLogger("naiad.isolation")


class _Calls:
    """Requests this process made to the parent, waiting for their replies."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._ids = itertools.count(1)
        self._waiting: dict[int, queue.SimpleQueue] = {}
        self._lock = threading.Lock()

    def open(self) -> tuple[int, queue.SimpleQueue]:
        call_id = next(self._ids)
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            self._waiting[call_id] = inbox
        return call_id, inbox

    def close(self, call_id: int) -> None:
        with self._lock:
            self._waiting.pop(call_id, None)

    def deliver(self, call_id: int, item: Any) -> None:
        with self._lock:
            inbox = self._waiting.get(call_id)
        if inbox is not None:
            inbox.put(item)

    def call(self, method: str, *args: Any) -> Any:
        call_id, inbox = self.open()
        try:
            self.channel.send(("call", call_id, method, args))
            ok, value = inbox.get()
        finally:
            self.close(call_id)
        if not ok:
            raise value
        return value


class _MetricsProxy:
    """The parent's custom-metric registry, by RPC."""

    def __init__(self, calls: _Calls) -> None:
        self._calls = calls

    def __getattr__(self, method: str) -> Any:
        return lambda *args: self._calls.call("metric", method, args)


class ChildHost(Host):
    def __init__(self, calls: _Calls) -> None:
        self._calls = calls
        self.metrics = _MetricsProxy(calls)  # type: ignore[assignment]

    def run_infer(self, request: InferRequest) -> InferResponse:
        return self._calls.call("infer", request)

    def run_infer_stream(self, request: InferRequest) -> tuple[Iterator[InferResponse], Any]:
        call_id, inbox = self._calls.open()
        self._calls.channel.send(("stream_call", call_id, request))

        def iterate() -> Iterator[InferResponse]:
            try:
                while True:
                    response, error, done = inbox.get()
                    if error is not None:
                        raise error
                    if response is not None:
                        yield response
                    if done:
                        return
            finally:
                self._calls.close(call_id)

        return iterate(), lambda: self._calls.channel.send(("bls_cancel", call_id))

    def load_model(self, name: str, config: str, files: dict[str, bytes] | None) -> None:
        self._calls.call("load_model", name, config, files)

    def unload_model(self, name: str, unload_dependents: bool) -> None:
        self._calls.call("unload_model", name, unload_dependents)

    def is_model_ready(self, name: str, version: str) -> bool:
        return self._calls.call("is_model_ready", name, version)


class ChildStream:
    """A decoupled request's stream, forwarded to the parent's real one."""

    def __init__(self, channel: Channel, key: int, on_close: Any) -> None:
        self._channel = channel
        self._key = key
        self._on_close = on_close
        self._closed = False
        self._cancelled = False
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        self._cancelled = True

    def send(self, response: Any = None, *, final: bool = False, error: Any = None) -> None:
        with self._lock:
            if self._closed:
                raise StreamClosed("Response sender has been closed.")
            if final:
                self._closed = True
                self._on_close(self._key)
            self._channel.send(("stream", self._key, response, final, error))

    def fail(self, error: NaiadError) -> None:
        try:
            self.send(None, final=True, error=error)
        except StreamClosed:
            pass


def _backend_class(module: str, qualname: str) -> type[InferenceBackend]:
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(
            f"backend class {module}.{qualname} cannot be imported in an instance process "
            f'({type(exc).__name__}: {exc}); serve it with instance_isolation "thread"'
        ) from exc
    return obj


def _as_error(exc: BaseException) -> NaiadError:
    if isinstance(exc, NaiadError):
        return exc
    return InternalError(f"{type(exc).__name__}: {exc}")


class Child:
    def __init__(self, channel: Channel, fast: Channel | None = None) -> None:
        self.channel = channel
        #: the socket the server's event loop writes executions to and reads results from
        self.fast = fast
        self.calls = _Calls(channel)
        self.host = ChildHost(self.calls)
        self.backend: Any = None
        self.streams: dict[int, ChildStream] = {}
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        #: written when a job is queued: the execution thread waits on it and the fast socket
        self._wake_r, self._wake_w = os.pipe()

    def setup_logging(self, spec: dict) -> None:
        from ..logs import LogSettings, configure_logging

        configure_logging(LogSettings(**spec["log"]))

    def setup(self, spec: dict) -> None:
        self.setup_logging(spec)
        install_default(self.host)
        config = ModelConfig()
        config.ParseFromString(spec["config"])
        cls = _backend_class(spec["module"], spec["qualname"])
        name, kind, device = spec["instance"]
        ctx = InstanceContext(name, kind, device, self.host)
        self.backend = cls(config, Path(spec["model_path"]), Path(spec["version_path"]), ctx)
        self.signature = Signature.from_config(config)

    def run(self) -> None:
        kind, spec = self.channel.recv()
        if kind == "auto_complete":
            self.auto_complete(spec)
            return
        # the load runs on the execution thread while this one reads: initialize may call the
        # server (custom metrics, model control) and needs the replies
        self._queue(("load", spec))
        executor = threading.Thread(target=self._executor, name="naiad-child-exec", daemon=True)
        executor.start()
        while True:
            try:
                message = self.channel.recv()
            except (EOFError, OSError):
                os._exit(0)  # the server is gone
            kind = message[0]
            if kind in ("exec", "exec_batch", "finalize"):
                self._queue(message)
            elif kind == "reply":
                self.calls.deliver(message[1], (message[2], message[3]))
            elif kind == "bls_item":
                self.calls.deliver(message[1], message[2:])
            elif kind == "cancel":
                stream = self.streams.get(message[1])
                if stream is not None:
                    stream.cancel()
            elif kind == "is_ready":  # beside a running execution, as a readiness probe would
                threading.Thread(
                    target=self._check_ready, args=(message[1],), name="naiad-child-ready"
                ).start()
            if kind == "finalize":
                executor.join()  # finalize runs there, then says so
                return

    def _queue(self, job: Any) -> None:
        self.jobs.put(job)
        os.write(self._wake_w, b"\0")

    def _stream_closed(self, key: int) -> None:
        self.streams.pop(key, None)

    def auto_complete(self, spec: dict) -> None:
        """One-shot: let the backend class complete the config, send it back, exit."""
        try:
            self.setup_logging(spec)
            config = ModelConfig()
            config.ParseFromString(spec["config"])
            cls = _backend_class(spec["module"], spec["qualname"])
            cls.auto_complete_config(config, Path(spec["version_path"]))
            self.channel.send(("completed", config.SerializeToString()))
        except BaseException as exc:
            self.channel.send(("init_error", _as_error(exc)))

    def _executor(self) -> None:
        """The execution thread: jobs from the control socket's reader, and the executions the
        server's event loop writes to the fast socket, read here directly (the loop's write
        wakes this thread, nothing in between)."""
        poller = select.epoll()  # selectors' wrapper costs as much again per wake-up
        poller.register(self._wake_r, select.EPOLLIN)
        reader = None
        if self.fast is not None:
            fd = self.fast.conn.fileno()
            reader = FrameReader(fd, self.fast, "the server", tagged=True)
            poller.register(fd, select.EPOLLIN)
        jobs = self.jobs
        while True:
            while not jobs.empty():  # the only consumer: get() does not wait
                if not self._run(jobs.get()):
                    return
            for fd, _events in poller.poll():
                if fd == self._wake_r:
                    os.read(self._wake_r, 4096)
                elif reader is not None and not self._serve_fast(reader):
                    # the fast socket ended: the control socket says what comes next
                    poller.unregister(fd)
                    reader.close()
                    reader = None

    def _serve_fast(self, reader: FrameReader) -> bool:
        """Run the executions the server's loop wrote, and those that arrive meanwhile (the
        next one often waits already: no select then); False at the end of the stream."""
        messages = reader.read()
        while True:
            if messages is None:
                return False
            for call_id, requests in messages:
                self._run_fast(call_id, requests)
            if not self.jobs.empty():
                return True
            try:
                messages = reader.read(wait=False)
            except BlockingIOError:
                return True

    def _run_fast(self, call_id: int, requests: Any) -> None:
        """An execution from the server's loop; its outputs are checked here (the server trusts
        them), so the loop does not spend its time on it. An execution that cannot be read or
        whose answer cannot be encoded fails alone, with the reason."""
        assert self.fast is not None
        try:
            if isinstance(requests, Unreadable):
                raise InternalError(f"the execution could not be read: {requests}")
            answer: tuple = (self._exec(requests, None, checked=True), None)
        except BaseException as exc:  # fails this execution only
            answer = (None, _as_error(exc))
        try:
            self.fast.send(answer, call_id)
        except OSError:
            pass  # the server is gone: the control socket's end stops this process
        except Exception as exc:  # an answer pickle refuses (an odd object from the model)
            error = InternalError(f"the answer could not be sent to the server: {exc}")
            self.fast.send((None, error), call_id)

    def _run(self, message: Any) -> bool:
        """One job from the control socket; False after the last (finalize)."""
        kind = message[0]
        if kind == "load":
            try:
                self.setup(message[1])
                self.backend.load()
            except BaseException as exc:
                self.channel.send(("init_error", _as_error(exc)))
                os._exit(0)
            self.channel.send(("ready", self.backend.readiness_check() is not None))
            return True
        if kind == "finalize":
            try:
                self.backend.unload()
            except BaseException:
                log.exception("unloading the instance failed")
            self.channel.send(("finalized",))
            return False
        call_id = message[1]
        try:
            if kind == "exec":
                results: Any = self._exec(message[2], message[3])
            else:
                results = dict(self.backend.execute(message[2], message[3]))
            self.channel.send(("result", call_id, results, None))
        except BaseException as exc:  # fails this execution only
            self.channel.send(("result", call_id, None, _as_error(exc)))
        return True

    def _check_ready(self, call_id: int) -> None:
        check = self.backend.readiness_check()
        try:
            if check is not None:
                check()
            self.channel.send(("result", call_id, True, None))
        except BaseException as exc:
            self.channel.send(("result", call_id, None, _as_error(exc)))

    def _exec(
        self, packed: list[tuple], keys: list[int | None] | None, checked: bool = False
    ) -> list[Any]:
        """Run an execution; ``keys``: the decoupled requests' stream keys (None: none is)."""
        requests = [unpack_request(p) for p in packed]
        if keys is not None:
            for request, key in zip(requests, keys, strict=True):
                if key is not None:
                    stream = ChildStream(self.channel, key, self._stream_closed)
                    self.streams[key] = stream
                    request.stream = stream
        assert isinstance(self.backend, CustomInstance)
        results = list(self.backend.execute_requests(requests))
        if checked and len(results) == len(requests):
            results = [self._check(q, r) for q, r in zip(requests, results, strict=True)]
        return [_as_error(r) if isinstance(r, BaseException) else pack_result(r) for r in results]

    def _check(self, request: InferRequest, result: Any) -> Any:
        """What the server's Instance checks of a custom backend's answer, done here."""
        if isinstance(result, BaseException):
            return result
        if result is None:
            return InternalError(
                f"custom backend of model '{self.signature.model_name}' returned no response "
                "for a request"
            )
        try:
            result.outputs = check_custom_outputs(self.signature, request, result.outputs)
        except NaiadError as exc:
            return exc
        return result


def main(argv: list[str]) -> int:
    import faulthandler
    import signal

    faulthandler.enable()  # a crash leaves its traceback in the server's log
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which stops us
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid>: where is it stuck?
    memory.tune_allocator()  # as the server does
    channel = Channel(Connection(int(argv[1])), argv[2])
    fast = Channel(Connection(int(argv[3])), argv[2] + "f") if len(argv) > 3 else None
    Child(channel, fast).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
