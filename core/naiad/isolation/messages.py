"""The common messages between the server and an instance process, in a compact form.

An execution's requests travel as plain tuples of their fields (no dataclass pickling, no
``stream``: a decoupled request's stream is forwarded by key, see
:mod:`naiad.isolation.parent`), its responses likewise; errors and ``None`` (answered through
a stream) as they are. Both sides build the same objects back.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

from ..inference import InferRequest, InferResponse, RequestedOutput

#: what crosses of a request: every field but the server-side ones, in declaration order
_LOCAL = ("stream",)
_FIELDS = tuple(f.name for f in dataclasses.fields(InferRequest) if f.name not in _LOCAL)
_OUTPUT_INDEX = _FIELDS.index("outputs")
assert all(f.name in _LOCAL for f in dataclasses.fields(InferRequest)[len(_FIELDS) :]), (
    "server-side InferRequest fields must come last"
)
_OUTPUT_FIELDS = tuple(f.name for f in dataclasses.fields(RequestedOutput))


_fields = operator.attrgetter(*_FIELDS)
_output_fields = operator.attrgetter(*_OUTPUT_FIELDS)


def pack_request(r: InferRequest) -> tuple:
    values = _fields(r)
    outputs = r.outputs
    if outputs is None:
        return values
    packed = list(values)
    packed[_OUTPUT_INDEX] = [_output_fields(o) for o in outputs]
    return tuple(packed)


def unpack_request(values: tuple) -> InferRequest:
    r = InferRequest(*values)
    outputs = values[_OUTPUT_INDEX]
    if outputs is not None:
        r.outputs = [RequestedOutput(*o) for o in outputs]
    return r


def pack_result(item: Any) -> Any:
    """One entry of an execution's results: a response as a tuple, anything else as is."""
    if type(item) is InferResponse:
        return (
            item.model_name,
            item.model_version,
            item.id,
            item.outputs,
            item.datatypes,
            item.parameters,
            item.final,
        )
    return item


def unpack_result(item: Any) -> Any:
    return InferResponse(*item) if type(item) is tuple else item
