"""Runs one instance of a Triton ``model.py`` (``class TritonPythonModel``) unchanged.

Life cycle, arguments, return rules and error texts follow Triton's python backend
(``shared/reference/python-backend.md`` §2-§6): ``TritonPythonModel()``, ``initialize(args)``
with Triton's seven string keys, ``execute(requests)`` (sync or ``async def``, on a per-instance
event loop thread), ``finalize()``. Requests arrive as naiad :class:`InferRequest` objects and
leave as :class:`InferResponse` objects (or errors); decoupled models answer through the
request's :class:`naiad.streaming.ResponseStream`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import queue
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..backend import InstanceContext
from ..config import ModelConfig, model_config_from_json, model_config_to_json
from ..errors import InternalError, ModelLoadError, NaiadError, Unavailable, Unsupported
from ..inference import InferRequest, InferResponse
from ..readiness import failed_message
from ..streaming import StreamClosed
from . import host as _host
from .objects import (
    InferenceRequest,
    InferenceResponse,
    InferenceResponseSender,
    InferenceTrace,
    Tensor,
    TritonModelException,
    sequence_flags,
)
from .utils import TRITONSERVER_REQUEST_RELEASE_ALL
from .utils import ModelConfig as PbModelConfig

log = logging.getLogger(__name__)

CLASS_NAME = "TritonPythonModel"
#: the trace of every request given to ``execute`` (stateless: always ``None`` contexts)
_NO_TRACE = InferenceTrace()
_new_request = object.__new__
_wrap_tensor = Tensor._wrap


def triton_args(config: ModelConfig, model_path: Path, version_path: Path, ctx: InstanceContext):
    """The ``args`` dict of ``initialize``, exactly Triton's keys (all strings)."""
    kind = ctx.kind.removeprefix("KIND_")
    return {
        "model_config": json.dumps(model_config_to_json(config)),
        "model_instance_kind": kind,
        "model_instance_name": ctx.name,
        "model_instance_device_id": str(max(ctx.device_id, 0)),
        "model_repository": str(model_path),
        "model_version": str(version_path.name),
        "model_name": config.name,
    }


def add_import_paths(version_path: Path) -> None:
    """Triton's ``sys.path`` additions: the version folder, then the model folder."""
    for folder in (str(version_path), str(version_path.parent)):
        if folder not in sys.path:
            sys.path.append(folder)


def auto_complete(cls: type, config: ModelConfig) -> None:
    """Let ``TritonPythonModel.auto_complete_config`` complete ``config`` in place."""
    fn = getattr(cls, "auto_complete_config", None)
    if fn is None:
        return
    wrapped = PbModelConfig(json.dumps(model_config_to_json(config)))
    try:
        result = fn(wrapped)
    except Exception as exc:
        raise ModelLoadError(f"auto_complete_config: {type(exc).__name__}: {exc}") from exc
    if not isinstance(result, PbModelConfig):
        raise ModelLoadError(
            f"auto_complete_config function in model '{config.name}' must return a valid "
            "pb.ModelConfig object."
        )
    config.CopyFrom(model_config_from_json(result.as_dict(), model_name=config.name))


def check_parameters(config: ModelConfig) -> None:
    """Triton's python-backend parameters: what they mean here, or a refusal with the reason.

    ``FORCE_CPU_ONLY_INPUT_TENSORS``: inputs are always in CPU memory here, so ``"yes"`` and
    ``"no"`` both hold; other values are refused as Triton refuses them. ``EXECUTION_ENV_PATH``
    is read where the instance process starts (:func:`naiad.isolation.execution_env`).
    """
    if "FORCE_CPU_ONLY_INPUT_TENSORS" in config.parameters:
        value = config.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value
        if value.lower() not in ("yes", "no"):
            raise Unsupported(f"Incorrect value for FORCE_CPU_ONLY_INPUT_TENSORS: {value}'")


class TritonRunner:
    """One ``TritonPythonModel`` object and what it needs to serve requests."""

    def __init__(
        self,
        model_class: type,
        config: ModelConfig,
        model_path: Path,
        version_path: Path,
        instance: InstanceContext,
        host: _host.Host | None,
    ) -> None:
        self.config = config
        self.model_path = model_path
        self.version_path = version_path
        self.instance = instance
        self.host = host
        self.decoupled = config.model_transaction_policy.decoupled
        self.version = int(version_path.name) if version_path.name.isdigit() else 1
        self._all_outputs = [o.name for o in config.output]
        self._model = model_class()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None

    # ---- life cycle -----------------------------------------------------------------------------

    def initialize(self) -> None:
        check_parameters(self.config)
        if not callable(getattr(self._model, "execute", None)):
            raise ModelLoadError(
                f"Python model {self.version_path / 'model.py'} does not implement `execute` "
                "method."
            )
        if inspect.iscoroutinefunction(self._model.execute):
            self._start_loop()
        init = getattr(self._model, "initialize", None)
        if init is None:
            return
        args = triton_args(self.config, self.model_path, self.version_path, self.instance)
        token = _host.calling_runner.set(self)
        try:
            init(args)
        except Exception as exc:
            log.exception("initialize of model '%s' failed", self.config.name)
            raise ModelLoadError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            _host.calling_runner.reset(token)

    def finalize(self) -> None:
        fin = getattr(self._model, "finalize", None)
        try:
            if fin is not None:
                fin()
        except Exception:
            log.exception(
                "finalize of model '%s' instance '%s' failed", self.config.name, self.instance.name
            )
        finally:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._loop = None

    def has_is_ready(self) -> bool:
        """The model defines ``is_ready()`` (Triton calls it at each model-readiness check)."""
        return callable(getattr(self._model, "is_ready", None))

    def check_ready(self) -> None:
        """Call the model's ``is_ready()`` (sync or ``async def``); raise Unavailable with
        Triton's text unless it returns True. Blocking, off the event loop."""
        name = self.instance.name
        try:
            result = self._model.is_ready()
            if inspect.isawaitable(result):
                loop = self._loop
                if loop is not None:
                    result = asyncio.run_coroutine_threadsafe(result, loop).result()  # type: ignore[arg-type]
                else:
                    result = asyncio.run(result)  # type: ignore[arg-type]
        except Exception as exc:
            log.error(
                "is_ready of model '%s' instance '%s' raised", self.config.name, name, exc_info=exc
            )
            raise Unavailable(failed_message(name)) from exc
        if not isinstance(result, bool):
            log.error(
                "is_ready() must return a boolean value (model '%s' instance '%s' returned %s)",
                self.config.name,
                name,
                type(result).__name__,
            )
            raise Unavailable(failed_message(name))
        if not result:
            raise Unavailable(failed_message(name))

    def _start_loop(self) -> None:
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            loop.run_forever()

        thread = threading.Thread(target=run, name=f"naiad-{self.instance.name}-loop", daemon=True)
        thread.start()
        started.wait()
        self._loop, self._loop_thread = loop, thread

    # ---- execution ------------------------------------------------------------------------------

    def execute_requests(self, requests: Sequence[InferRequest]) -> list[Any]:
        """naiad requests in, one response / error / None (streamed) per request out."""
        pb_request = self._pb_request
        pb_requests = [pb_request(r) for r in requests]
        token = _host.calling_runner.set(self)
        try:
            result = self._call(pb_requests, requests)
        except Exception as exc:  # the whole batch fails; the instance keeps serving
            log.error("execute of model '%s' raised", self.config.name, exc_info=exc)
            return [self._failed(f"{type(exc).__name__}: {exc}")] * len(requests)
        finally:
            _host.calling_runner.reset(token)
        if self.decoupled:
            if result is not None:
                error = InternalError(
                    f"Python model '{self.instance.name}' is using the decoupled mode and the "
                    "execute function must return None."
                )
                return [error] * len(requests)
            return [None] * len(requests)
        return self._responses(result, requests, pb_requests)

    def _failed(self, message: str) -> InternalError:
        return InternalError(
            f"Failed to process the request(s) for model '{self.instance.name}', message: {message}"
        )

    def _responses(
        self, result: Any, requests: Sequence[InferRequest], pb_requests: list[InferenceRequest]
    ) -> list[Any]:
        n = len(requests)
        if result is None:
            result = [None] * n
        if not isinstance(result, list):
            return [
                self._failed(f"Expected a list in the execute return, found type '{type(result)}'.")
            ] * n
        if len(result) != n:
            return [
                self._failed(
                    "Number of InferenceResponse objects do not match the number of "
                    f"InferenceRequest objects. InferenceRequest(s) size is:{n}, and "
                    f"InferenceResponse(s) size is:{len(result)}\n"
                )
            ] * n
        out: list[Any] = []
        to_naiad = self.to_naiad
        for request, item, pb in zip(requests, result, pb_requests, strict=True):
            if item is None:  # answered through its sender, if at all
                sent = pb._answers
                if not sent:
                    out.append(
                        self._failed("execute returned None for a request it did not answer")
                    )
                    continue
                item = sent[0]
            if not isinstance(item, InferenceResponse):
                return [
                    self._failed(
                        "Expected an 'InferenceResponse' object in the execute function return "
                        f"list, found type '{type(item)}'."
                    )
                ] * n
            out.append(to_naiad(item, request))
        return out

    def to_naiad(self, response: InferenceResponse, request: InferRequest) -> Any:
        """A pb_utils response as a naiad response (or the error it carries)."""
        error = response._error
        if error is not None:
            return _host.error_from_code(error.message(), error.code())
        outputs = {}
        for t in response._tensors:
            array = t._array
            # a tensor over device memory has none: as_numpy raises Triton's error
            outputs[t._name] = array if array is not None else t.as_numpy()
        # checked when the response was built (str keys; bool, int, str values): a copy is
        # what a JSON round trip would give
        params = dict(response._parameters) if response._parameters else {}
        return InferResponse(request.model_name, self.version, request.id, outputs, {}, params)

    def _call(self, pb_requests: list[InferenceRequest], requests: Sequence[Any]) -> Any:
        """Call ``execute``: directly, or as a coroutine on the instance's loop."""
        execute = self._model.execute
        loop = self._loop
        if loop is None:
            return execute(pb_requests)
        coro = execute(pb_requests)
        if threading.current_thread() is self._loop_thread:  # a nested call from a coroutine
            return _run_elsewhere(coro)
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        if not self.decoupled:
            return future.result()
        future.add_done_callback(lambda f: self._coroutine_done(f, requests))
        return None

    def _coroutine_done(self, future: Any, requests: Sequence[Any]) -> None:
        """A decoupled ``async def execute`` ended: an exception fails its open streams."""
        if future.cancelled() or future.exception() is None:
            return
        exc = future.exception()
        log.error("execute coroutine of model '%s' raised", self.config.name, exc_info=exc)
        for request in requests:
            stream = getattr(request, "stream", None)
            if stream is not None:
                stream.fail(self._failed(f"{type(exc).__name__}: {exc}"))

    def _pb_request(self, r: InferRequest) -> InferenceRequest:
        # the fields ``InferenceRequest.__init__`` would set, without its checks: naiad
        # validated the request, and the tensors are built here. ``_requested`` and
        # ``_parameters`` are shared, not copied: nothing changes them in place
        # (``requested_output_names()`` and ``parameters()`` hand out copies)
        req = _new_request(InferenceRequest)
        wrap = _wrap_tensor
        req.__dict__.update(
            _request_id=r.id,
            _correlation_id=r.sequence_id,
            _inputs=[wrap(name, a) for name, a in r.inputs.items()],
            _requested=[o.name for o in r.outputs] if r.outputs else self._all_outputs,
            _model_name=self.config.name,
            _model_version=self.version,
            _flags=sequence_flags(r.sequence_start, r.sequence_end),
            _timeout=r.timeout_us or 0,
            _trace=_NO_TRACE,
            _parameters=r.parameters,
            _release_flags=TRITONSERVER_REQUEST_RELEASE_ALL,
        )
        stream = r.stream
        if stream is None:  # its sender is made when the model asks for it
            req._answers = []
            if self.decoupled:
                req._decoupled = True
            return req

        def send(response: InferenceResponse | None, final: bool) -> None:
            try:
                if response is None:
                    stream.send(None, final=final)
                    return
                converted = self.to_naiad(response, r)
                if isinstance(converted, NaiadError):
                    stream.send(None, final=final, error=converted)
                else:
                    stream.send(converted, final=final)
            except StreamClosed as exc:
                raise TritonModelException(
                    "Unable to send response. Response sender has been closed."
                ) from exc

        req._sender = InferenceResponseSender(send, True, lambda: stream.cancelled)
        return req

    # ---- BLS calls from this instance to its own model -------------------------------------------

    def serves(self, model_name: str, model_version: int) -> bool:
        return model_name == self.config.name and int(model_version) in (-1, self.version)

    def execute_nested(self, req: InferenceRequest) -> InferenceResponse:
        """A BLS request from this instance to its own model: run it here, as a nested call."""
        items, _cancel = self.execute_nested_stream(req, streaming=False)
        responses = list(items)
        return responses[-1] if responses else InferenceResponse()

    def execute_nested_stream(
        self, req: InferenceRequest, streaming: bool = True
    ) -> tuple[Iterator[InferenceResponse], Any]:
        from .objects import TritonError

        if self.decoupled and not streaming:
            exc = _host._bls_error(self.config.name, _host.Unsupported("decoupled"))
            return iter([InferenceResponse(error=TritonError(exc.message, 5))]), lambda: None
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        cancelled = threading.Event()
        wanted = set(req.requested_output_names())

        def deliver(response: InferenceResponse | None, final: bool) -> None:
            inbox.put((response, final))

        nested = InferenceRequest.__new__(InferenceRequest)
        nested.__dict__.update(req.__dict__)
        nested._sender = InferenceResponseSender(deliver, self.decoupled, cancelled.is_set)
        try:
            result = self._call([nested], [])
        except Exception as exc:
            message = self._failed(f"{type(exc).__name__}: {exc}").message
            return iter([InferenceResponse(error=TritonError(message))]), cancelled.set
        if not self.decoupled:
            items = result if isinstance(result, list) and len(result) == 1 else [None]
            response = items[0]
            if response is None:
                got = []
                while not inbox.empty():
                    got.append(inbox.get()[0])
                response = next((g for g in got if g is not None), None)
            if not isinstance(response, InferenceResponse):
                response = InferenceResponse(
                    error=TritonError(
                        self._failed(
                            "Expected an 'InferenceResponse' object in the execute function return "
                            f"list, found type '{type(response)}'."
                        ).message
                    )
                )
            inbox = queue.SimpleQueue()
            inbox.put((response, True))

        def iterate() -> Iterator[InferenceResponse]:
            while True:
                response, final = inbox.get()
                if response is not None:
                    if wanted and not response.has_error():
                        response = InferenceResponse(
                            [t for t in response.output_tensors() if t.name() in wanted],
                            parameters=json.loads(response.parameters()),
                        )
                    yield response
                elif final and streaming:
                    yield InferenceResponse()
                if final:
                    return

        return iterate(), cancelled.set


def _run_elsewhere(coro: Any) -> Any:
    """Run ``coro`` to completion on a fresh loop in a helper thread (the caller's loop is
    blocked in a synchronous call)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name="naiad-nested-call", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("result")
