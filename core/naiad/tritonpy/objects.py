"""The classes of ``triton_python_backend_utils`` a ``model.py`` touches: tensors, requests,
responses, errors, response senders and BLS iterators (``python-backend.md`` §7.2-7.6, §8).

What reaches the rest of the server (BLS, model control, decoupled sends) goes through the
current :class:`naiad.tritonpy.host.Host`, so the same objects work inside the server process
and inside an instance's own process.
"""

from __future__ import annotations

import enum
import json
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import host as _host
from .utils import (
    TRITONSERVER_REQUEST_FLAG_SEQUENCE_END,
    TRITONSERVER_REQUEST_FLAG_SEQUENCE_START,
    TRITONSERVER_REQUEST_RELEASE_ALL,
    TRITONSERVER_RESPONSE_COMPLETE_FINAL,
    numpy_to_triton_type,
)


class TritonModelException(Exception):
    """Raised in model code for backend-side failures (sender misuse, bad tensors, BLS misuse)."""


class TritonError:
    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = 1) -> None:
        if message is None or code is None:
            raise TypeError("TritonError message and code cannot be None")
        self._message = str(message)
        self._code = int(code)

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, {self._code})"


class MemoryType(enum.IntEnum):
    TRITONSERVER_MEMORY_CPU = 0
    TRITONSERVER_MEMORY_CPU_PINNED = 1
    TRITONSERVER_MEMORY_GPU = 2


TRITONSERVER_MEMORY_CPU = MemoryType.TRITONSERVER_MEMORY_CPU
TRITONSERVER_MEMORY_GPU = MemoryType.TRITONSERVER_MEMORY_GPU


class PreferredMemory:
    def __init__(self, preferred_memory_type: int = 0, preferred_device_id: int = 0) -> None:
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


class InferenceTrace:
    def get_context(self, mode: str = "opentelemetry") -> str | None:
        return None


_SUPPORTED_KINDS = "biuf"


class Tensor:
    """A named tensor; ``as_numpy()`` is the array itself (no copy)."""

    __slots__ = ("_name", "_array", "_dlpack")

    def __init__(self, name: str, numpy_array: Any, /) -> None:
        if not name:
            raise TritonModelException("Tensor name cannot be an empty string.")
        array = numpy_array if isinstance(numpy_array, np.ndarray) else np.asarray(numpy_array)
        kind = array.dtype.kind
        if not (kind in _SUPPORTED_KINDS or kind == "O" or kind == "S") or (
            kind == "f" and array.dtype.itemsize > 8
        ):
            raise TritonModelException("NumPy dtype is not supported.")
        if kind == "S":
            array = array.astype(np.object_)
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        self._name = name
        #: None for a tensor over device memory (DLPack from a GPU): ``_dlpack`` holds it
        self._array: np.ndarray | None = array
        self._dlpack: Any = None

    @classmethod
    def _wrap(cls, name: str, array: np.ndarray) -> Tensor:
        """A tensor over an array naiad already checked (no conversion)."""
        t = cls.__new__(cls)
        t._name, t._array, t._dlpack = name, array, None
        return t

    @classmethod
    def from_dlpack(cls, name: str, capsule: Any) -> Tensor:
        device = getattr(capsule, "__dlpack_device__", None)
        if device is not None and device()[0] not in (1, 3):  # kDLCPU, kDLCUDAHost
            obj = capsule
            t = cls.__new__(cls)
            t._name, t._array, t._dlpack = name, None, obj
            return t
        array = np.from_dlpack(capsule)
        if not array.flags.c_contiguous:
            raise TritonModelException("DLPack tensor is not contiguous.")
        return cls._wrap(name, array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        if self._array is None:
            raise TritonModelException("Tensor is stored in GPU and cannot be converted to NumPy.")
        return self._array

    def shape(self) -> list[int]:
        if self._array is None:
            return list(self._dlpack.shape)
        return list(self._array.shape)

    def triton_dtype(self) -> int | None:
        return numpy_to_triton_type(self.as_numpy().dtype)

    def is_cpu(self) -> bool:
        return self._array is not None

    def to_dlpack(self) -> Any:
        if self._array is None:
            return self._dlpack.__dlpack__()
        if self._array.dtype == np.object_:
            raise TritonModelException("DLPack does not have support for string tensors.")
        return self._array.__dlpack__()

    def __dlpack__(self, stream: Any = None) -> Any:
        return self.to_dlpack()

    def __dlpack_device__(self) -> tuple[int, int]:
        if self._array is None:
            return self._dlpack.__dlpack_device__()
        return (1, 0)

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={self.shape()})"


def _check_parameters(parameters: Any) -> dict:
    if parameters is None:
        return {}
    if isinstance(parameters, str):
        parameters = json.loads(parameters)
    if not isinstance(parameters, dict):
        raise TritonModelException("Parameters must be a dictionary.")
    for key, value in parameters.items():
        if not isinstance(key, str):
            raise TritonModelException(
                f"Expect parameters keys to have type str, found type {type(key)}"
            )
        if not isinstance(value, (bool, int, str)):
            raise TritonModelException(
                f"Expect parameters values to have type bool/int/str, found type {type(value)}"
            )
    return dict(parameters)


class InferenceResponse:
    def __init__(
        self,
        output_tensors: list[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: Any = None,
    ) -> None:
        tensors = list(output_tensors) if output_tensors else []
        for t in tensors:
            if not isinstance(t, Tensor):
                raise TritonModelException(
                    f"Expected a list of 'Tensor' objects as output_tensors, found {type(t)}"
                )
        if error is not None and not isinstance(error, TritonError):
            raise TritonModelException("error must be a TritonError")
        self._tensors = tensors
        self._error = error
        self._parameters = _check_parameters(parameters) if parameters is not None else {}

    def output_tensors(self) -> list[Tensor]:
        return self._tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)


class InferenceResponseSender:
    """Sends a request's responses (decoupled models: any number, then FINAL)."""

    def __init__(self, deliver: Any, decoupled: bool, cancelled: Any) -> None:
        #: ``deliver(response_or_None, final)``; raises :class:`TritonModelException`
        self._deliver = deliver
        self._decoupled = decoupled
        self._cancelled = cancelled
        self._closed = False
        self._sent = 0

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if flags not in (0, TRITONSERVER_RESPONSE_COMPLETE_FINAL):
            raise TritonModelException("Unable to send response. Unsupported flag provided.")
        if flags == 0 and response is None:
            raise TritonModelException(
                "Inference Response object must be provided when the response flags is set to zero."
            )
        if self._closed:
            raise TritonModelException("Unable to send response. Response sender has been closed.")
        if not self._decoupled:
            if response is not None and self._sent:
                raise TritonModelException(
                    "Unable to send response. Non-decoupled model cannot send more than one "
                    "response."
                )
            if response is None and not self._sent:
                raise TritonModelException(
                    "Unable to send response. Non-decoupled model cannot send complete final "
                    "before sending a response."
                )
        final = flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if final:
            self._closed = True
        if response is not None:
            self._sent += 1
        self._deliver(response, final)

    def is_cancelled(self) -> bool:
        return bool(self._cancelled())

    @property
    def closed(self) -> bool:
        return self._closed


class ResponseIterator:
    """The responses of a BLS ``exec(decoupled=True)``, in order, up to the final one."""

    def __init__(self, items: Iterator[InferenceResponse], cancel: Any) -> None:
        self._items = items
        self._cancel = cancel

    def __iter__(self) -> ResponseIterator:
        return self

    def __next__(self) -> InferenceResponse:
        return next(self._items)

    def cancel(self) -> None:
        self._cancel()


def _collect(answers: list[InferenceResponse]) -> Any:
    """A sender target that keeps what the model sends in ``answers``."""

    def deliver(response: InferenceResponse | None, final: bool) -> None:
        if response is not None:
            answers.append(response)

    return deliver


def _never() -> bool:
    return False


_SENDER_LOCK = threading.Lock()


class InferenceRequest:
    """A request handed to ``execute``, or one a model builds for BLS.

    A request given to ``execute`` that has no stream of its own (a non-decoupled model's)
    gets its response sender when the model first asks for it: until then it holds only the
    list the sender will put what it sends into (``_answers``), so that a model answering by
    its return value, as most do, costs no sender per request.
    """

    # class defaults: what a request built for ``execute`` need not set on itself
    _sender: InferenceResponseSender | None = None
    #: a request given to ``execute`` without a stream: where its sender's responses land
    _answers: list[InferenceResponse] | None = None
    _decoupled = False

    def __init__(
        self,
        request_id: str = "",
        correlation_id: int | str = 0,
        inputs: list[Tensor] | None = None,
        requested_output_names: list[str] | None = None,
        model_name: str = "",
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        preferred_memory: PreferredMemory | None = None,
        trace: InferenceTrace | None = None,
        parameters: Any = None,
    ) -> None:
        if not isinstance(correlation_id, (int, str)) or isinstance(correlation_id, bool):
            raise TritonModelException("Correlation ID must be integer or string")
        for t in inputs or []:
            if not isinstance(t, Tensor):
                raise TritonModelException(f"Expected a 'Tensor' object as input, found {type(t)}")
        for name in requested_output_names or []:
            if not name:
                raise TritonModelException("Requested output name cannot be an empty string.")
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._inputs = list(inputs or [])
        self._requested = list(requested_output_names or [])
        self._model_name = model_name
        self._model_version = model_version
        self._flags = flags
        self._timeout = timeout
        self._trace = trace or InferenceTrace()
        self._parameters = _check_parameters(parameters)
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL
        #: set for requests given to execute
        self._sender: InferenceResponseSender | None = None

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> list[str]:
        return list(self._requested)

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        self._flags = flags

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def trace(self) -> InferenceTrace:
        return self._trace

    def model_name(self) -> str:
        return self._model_name

    def set_release_flags(self, flags: int) -> None:
        self._release_flags = flags

    def get_response_sender(self) -> InferenceResponseSender:
        sender = self._sender
        if sender is None:
            answers = self._answers
            if answers is None:
                raise TritonModelException("This request has no response sender (a BLS request).")
            with _SENDER_LOCK:  # threads of the model asking at once get the same one
                sender = self._sender
                if sender is None:
                    sender = InferenceResponseSender(_collect(answers), self._decoupled, _never)
                    self._sender = sender
        return sender

    def is_cancelled(self) -> bool:
        return self._sender is not None and self._sender.is_cancelled()

    def exec(self, decoupled: bool = False) -> Any:
        """BLS: run this request on model ``model_name`` of this server, blocking."""
        host = _host.current()
        if decoupled:
            items, cancel = host.infer_stream(self)
            return ResponseIterator(items, cancel)
        return host.infer(self)

    async def async_exec(self, decoupled: bool = False) -> Any:
        """BLS inside ``async def execute``: several may run concurrently."""
        import asyncio
        import contextvars

        context = contextvars.copy_context()
        return await asyncio.wrap_future(_bls_pool().submit(context.run, self.exec, decoupled))


_pools: list[Any] = []


def _bls_pool() -> Any:
    """The daemon threads ``async_exec`` calls wait on (one pool per process)."""
    if not _pools:
        from ..scheduling.worker import DaemonPool

        _pools.append(DaemonPool("naiad-bls", 32))
    return _pools[0]


def sequence_flags(start: bool, end: bool) -> int:
    return (TRITONSERVER_REQUEST_FLAG_SEQUENCE_START if start else 0) | (
        TRITONSERVER_REQUEST_FLAG_SEQUENCE_END if end else 0
    )
