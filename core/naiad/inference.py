"""Transport-free request and response objects.

The HTTP layer (V2 and legacy v1) builds an :class:`InferRequest`; the data plane validates it
against the model config; the scheduler hands batches of them to a model instance; the instance
fills an :class:`InferResponse` per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidArgument


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for, and how it wants it back."""

    name: str
    binary: bool = False
    class_count: int = 0
    #: (region name, byte size, offset) when the output goes to shared memory
    shm: tuple[str, int, int] | None = None


@dataclass(slots=True)
class InferRequest:
    model_name: str
    #: -1 = let the server choose (highest READY version)
    model_version: int = -1
    id: str = ""
    #: input name -> array with the request's full shape (batch dim included when batching)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    #: None = every output of the model
    outputs: list[RequestedOutput] | None = None
    #: default kind for outputs not listed (``binary_data_output``)
    binary_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)
    sequence_id: int | str = 0
    sequence_start: bool = False
    sequence_end: bool = False
    priority: int = 0
    #: queue timeout in microseconds (None = model default)
    timeout_us: int | None = None
    #: batch size (1 for models with max_batch_size 0); filled by validation
    batch_size: int = 1
    #: where a decoupled model sends this request's responses
    #: (:class:`naiad.streaming.ResponseStream`); None when one answer is awaited
    stream: Any = field(default=None, repr=False, compare=False)


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: int
    id: str = ""
    #: output name -> array, in the order the backend produced them
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    #: output name -> protocol datatype
    datatypes: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    #: the last response of its request (a decoupled model may send several before it)
    final: bool = True


_INT64_MAX = (1 << 63) - 1


def parse_model_version(text: str | None) -> int:
    """A request's version string as Triton reads it; -1 (the server picks) when empty.

    One that is not an integer, or does not fit a signed 64-bit integer, is Triton's
    INVALID_ARG (its ``std::stol`` fails), not a Python ``int()`` of thousands of digits.
    """
    if not text:
        return -1
    if text.startswith("-") and text[1:].isdigit():
        raise InvalidArgument(
            f"invalid model version specified '{text}' , version should be an integral value > 0"
        )
    digits = text.lstrip("0")
    if not text.isdigit() or len(digits) > 19 or int(digits or "0") > _INT64_MAX:
        raise InvalidArgument(
            f"failed to get model version from specified version string '{text}' "
            "(details: stol), version should be an integral value > 0"
        )
    return int(digits or "0")
