"""What a ``model.py`` reaches beyond itself: BLS inference, model control, custom metrics.

:class:`Host` turns ``pb_utils`` objects into naiad ones and back; a subclass carries them to the
server: :class:`ServerHost` in the server process (onto the event loop, never blocking it), the
child side of :mod:`naiad.isolation` over its pipe. The host of the running code is found with
:func:`current`: the instance's own (a context variable set around ``execute``, which flows into
its coroutines and ``async_exec`` threads), else the process's default.

A BLS call from an instance to its own model runs nested on the calling instance (as a
function call would) instead of queueing behind itself: a model calling itself never deadlocks.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import (
    AlreadyExists,
    Cancelled,
    InternalError,
    InvalidArgument,
    NaiadError,
    NotFound,
    Unavailable,
    Unsupported,
)
from ..inference import InferRequest, InferResponse, RequestedOutput

if TYPE_CHECKING:
    from ..dataplane import DataPlane
    from .custom_metrics import MetricRegistry
    from .objects import InferenceRequest, InferenceResponse

#: the runner executing on this thread / coroutine (for nested self-calls and the host)
calling_runner: contextvars.ContextVar[Any] = contextvars.ContextVar("naiad_tritonpy_runner")
_default: list[Host] = []

_CODES: list[tuple[type[NaiadError], int]] = [
    (Cancelled, 7),
    (AlreadyExists, 6),
    (Unsupported, 5),
    (Unavailable, 4),
    (InvalidArgument, 3),
    (NotFound, 2),
    (InternalError, 1),
]
_ERRORS: dict[int, type[NaiadError]] = {
    0: NaiadError,
    1: InternalError,
    2: NotFound,
    3: InvalidArgument,
    4: Unavailable,
    5: Unsupported,
    6: AlreadyExists,
    7: Cancelled,
}


def current() -> Host:
    runner = calling_runner.get(None)
    if runner is not None and runner.host is not None:
        return runner.host
    if not _default:
        from .objects import TritonModelException

        raise TritonModelException("BLS is only supported during the 'execute' function.")
    return _default[-1]


def install_default(host: Host) -> None:
    """The host of code running outside any instance's context (threads a model starts)."""
    _default.clear()
    _default.append(host)


def code_of(exc: NaiadError) -> int:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return 0


def error_from_code(message: str, code: int) -> NaiadError:
    return _ERRORS.get(code, InternalError)(message)


# ---- pb_utils <-> naiad ---------------------------------------------------------------------


def to_naiad_request(req: InferenceRequest) -> InferRequest:
    corr = req.correlation_id()
    flags = req.flags()
    return InferRequest(
        model_name=req._model_name,
        model_version=int(req._model_version),
        id=req.request_id(),
        inputs={t.name(): t.as_numpy() for t in req.inputs()},
        outputs=[RequestedOutput(n) for n in req.requested_output_names()] or None,
        parameters=dict(req._parameters),
        sequence_id=corr,
        sequence_start=bool(flags & 1),
        sequence_end=bool(flags & 2),
        timeout_us=req.timeout() or None,
    )


def to_pb_response(response: InferResponse) -> InferenceResponse:
    from .objects import InferenceResponse, Tensor

    tensors = [Tensor._wrap(name, np.asarray(a)) for name, a in response.outputs.items()]
    params = {k: v for k, v in response.parameters.items() if isinstance(v, (bool, int, str))}
    return InferenceResponse(tensors, parameters=params)


def to_pb_error(exc: NaiadError) -> InferenceResponse:
    from .objects import InferenceResponse, TritonError

    return InferenceResponse(error=TritonError(exc.message, code_of(exc)))


class Host:
    """BLS and model control for ``pb_utils``; subclasses say how a naiad request travels."""

    #: custom metrics (``pb_utils.MetricFamily``) live here
    metrics: MetricRegistry

    # ---- what pb_utils calls ----------------------------------------------------------------

    def infer(self, req: InferenceRequest) -> InferenceResponse:
        runner = calling_runner.get(None)
        if runner is not None and runner.serves(req._model_name, req._model_version):
            return runner.execute_nested(req)
        try:
            return to_pb_response(self.run_infer(to_naiad_request(req)))
        except NaiadError as exc:
            return to_pb_error(_bls_error(req._model_name, exc))

    def infer_stream(self, req: InferenceRequest) -> tuple[Iterator[InferenceResponse], Any]:
        runner = calling_runner.get(None)
        if runner is not None and runner.serves(req._model_name, req._model_version):
            return runner.execute_nested_stream(req)
        items, cancel = self.run_infer_stream(to_naiad_request(req))
        return _pb_items(req._model_name, items), cancel

    # ---- what a subclass provides -------------------------------------------------------------

    def run_infer(self, request: InferRequest) -> InferResponse:
        raise NotImplementedError

    def run_infer_stream(self, request: InferRequest) -> tuple[Iterator[Any], Any]:
        """(iterator of InferResponse, ending after the final one or raising NaiadError;
        a callable that cancels the request)."""
        raise NotImplementedError

    def load_model(self, name: str, config: str, files: dict[str, bytes] | None) -> None:
        raise NotImplementedError

    def unload_model(self, name: str, unload_dependents: bool) -> None:
        raise NotImplementedError

    def is_model_ready(self, name: str, version: str) -> bool:
        raise NotImplementedError


def _pb_items(model: str, items: Iterator[InferResponse]) -> Iterator[InferenceResponse]:
    try:
        for response in items:
            yield to_pb_response(response)
    except NaiadError as exc:
        yield to_pb_error(_bls_error(model, exc))


def _bls_error(model: str, exc: NaiadError) -> NaiadError:
    if isinstance(exc, Unsupported) and "decoupled" in exc.message:
        return Unsupported(
            f"Model {model} is using the decoupled. The current BLS request call doesn't "
            "support models using the decoupled transaction policy. Please use "
            "'decoupled=True' argument to the 'exec' or 'async_exec' calls for decoupled "
            "models.'"
        )
    if isinstance(exc, NotFound) and "unknown model" in exc.message:
        return Unavailable(
            f"Failed for execute the inference request. Model '{model}' is not ready."
        )
    return exc


def files_for_load(files: dict[str, bytes] | None, name: str) -> dict[str, bytes] | None:
    """``pb_utils.load_model``'s ``files`` (``"file:1/model.py" -> bytes``) as the data plane
    takes them (path -> raw bytes)."""
    if files is None:
        return None
    if not isinstance(files, dict):
        raise InvalidArgument(
            f"failed to load model '{name}', files should be a dictionary of file paths and "
            "file contents"
        )
    out = {}
    for key, content in files.items():
        path = key[5:] if key.startswith("file:") else key
        out[path] = content.encode() if isinstance(content, str) else bytes(content)
    return out


def parse_version(version: str, name: str) -> int:
    if version in ("", None):
        return -1
    try:
        return int(version)
    except ValueError:
        raise InvalidArgument(
            f"failed to get model version from specified version string '{version}' (details: "
            "stoll), version should be an integral value > 0"
        ) from None


class ServerHost(Host):
    """The host inside the server process: calls the data plane on its event loop."""

    def __init__(self, dataplane: DataPlane, metrics: MetricRegistry) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def _call(self, coro: Any) -> Any:
        loop = self.loop
        if loop is None:
            coro.close()
            raise Unavailable("the server is not started")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise InternalError("a blocking server call was made on the event loop")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def run_infer(self, request: InferRequest) -> InferResponse:
        return self._call(self.dataplane.infer(request))

    def run_infer_stream(self, request: InferRequest) -> tuple[Iterator[InferResponse], Any]:
        items: queue.SimpleQueue = queue.SimpleQueue()
        cancelled = threading.Event()
        loop = self.loop
        if loop is None:
            raise Unavailable("the server is not started")

        async def pump() -> None:
            stream = self.dataplane.infer_stream(request)
            try:
                async for response in stream:
                    items.put((response, None))
                    if cancelled.is_set():
                        break
            except NaiadError as exc:
                items.put((None, exc))
            except Exception as exc:  # never leave the reader waiting
                items.put((None, InternalError(f"{type(exc).__name__}: {exc}")))
            finally:
                await stream.aclose()
                items.put((None, None))

        task = asyncio.run_coroutine_threadsafe(pump(), loop)

        def iterate() -> Iterator[InferResponse]:
            while True:
                response, error = items.get()
                if error is not None:
                    raise error
                if response is None:
                    return
                yield response
                if response.final:
                    return

        def cancel() -> None:
            cancelled.set()
            task.cancel()

        return iterate(), cancel

    def instance_failed(self, model: str, version: int, reason: str) -> None:
        """An instance is down for good: its model version stops serving, with the reason."""
        loop = self.loop
        if loop is None:
            return

        def mark() -> None:
            from ..models import ModelState

            mv = self.dataplane.models.versions(model).get(version)
            if mv is not None and mv.state is ModelState.READY:
                mv.state = ModelState.UNAVAILABLE
                mv.reason = reason

        loop.call_soon_threadsafe(mark)

    def load_model(self, name: str, config: str, files: dict[str, bytes] | None) -> None:
        self._call(self.dataplane.load_model(name, config or None, files_for_load(files, name)))

    def unload_model(self, name: str, unload_dependents: bool) -> None:
        self._call(self.dataplane.unload_model(name, unload_dependents))

    def is_model_ready(self, name: str, version: str) -> bool:
        number = parse_version(version, name)

        async def ready() -> bool:
            return self.dataplane.model_ready(name, number)

        return self._call(ready())


def config_json(text_or_dict: Any) -> str:
    return text_or_dict if isinstance(text_or_dict, str) else json.dumps(text_or_dict)
