"""Tensors as JSON ``data``: decoded and encoded in memory proportional to the request.

A JSON tensor costs Python objects: orjson makes one per element (a ``str``, ``int`` or
``float`` and its list slot), and a BYTES tensor is a numpy object array of ``bytes``. So the
decoded form of a JSON body is several times its size, and without care more: the strings, the
bytes made from them and the strings of the answer all alive at once (2M strings in 22 MiB of
JSON once peaked at 26x the body). Here:

- BYTES elements are encoded in chunks, each chunk's strings dropped as its bytes are made, so
  the strings and the bytes are never all alive together;
- a BYTES output is written to JSON in chunks (orjson fragments), never as one list of strings;
- :class:`DecodeBudget` bounds what one request's tensors may take once decoded, estimated from
  the JSON before it is parsed and counted again per tensor: over the bound the request is
  refused (413) with the reason, before the memory is spent.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import orjson

from ..errors import InternalError, InvalidArgument, RequestTooLarge
from ..tensors import NUMPY_DTYPES, element_count
from .json_chunks import ChunkedArray

#: what one JSON element costs once parsed, about: a list slot and an object (a short ``str``
#: takes 56 bytes and more, a ``float`` 24, a small ``int`` none)
JSON_ELEMENT_COST = 64
#: one BYTES element as a ``bytes`` object in an object array (object header and slot)
BYTES_ELEMENT_COST = 48
#: JSON parts at least this large are estimated before they are parsed
_ESTIMATE_FROM = 1 << 20
#: elements encoded or decoded in one step
_CHUNK = 1 << 16
_NONES = [None] * _CHUNK


class DecodeBudget:
    """What one request's decoded tensors may still take, in bytes."""

    __slots__ = ("limit", "left")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def take(self, size: int, what: str) -> None:
        self.left -= size
        if self.left < 0:
            raise RequestTooLarge(
                f"the request's tensors would take more than {self.limit} bytes once decoded "
                f"({what}); the limit is 4 x --http-max-input-size: send large tensors as "
                "binary data"
            )

    def estimate(self, json_part: memoryview) -> None:
        """Refuse a JSON part whose elements alone, once parsed, would exceed the budget."""
        if len(json_part) < _ESTIMATE_FROM:
            return
        data = np.frombuffer(json_part, dtype=np.uint8)
        commas = 0
        for i in range(0, len(data), _ESTIMATE_FROM):  # in steps: other threads run between
            commas += int(np.count_nonzero(data[i : i + _ESTIMATE_FROM] == 0x2C))
        self.take(commas * JSON_ELEMENT_COST, f"about {commas} JSON elements")


def json_to_array(
    data: Any, datatype: str, shape: list[int], name: str, budget: DecodeBudget | None = None
) -> np.ndarray:
    """A tensor from JSON ``data`` (flat or nested, row-major).

    Numbers are converted and type-checked by numpy in C (a per-element Python check cost
    ~1 µs per element, 190 ms for a 3×224×224 image).
    """
    if datatype in ("FP16", "BF16"):
        raise InvalidArgument(
            f"receiving {datatype} data via JSON is not supported. Please use the binary data "
            f"format for input '{name}'"
        )
    count = element_count(shape)
    if datatype == "BYTES":
        if budget is not None:
            budget.take(count * BYTES_ELEMENT_COST, f"{count} BYTES elements of input '{name}'")
        if isinstance(data, ChunkedArray):
            return _chunked_bytes(data, shape, count, name)
        return _json_bytes(data, shape, count, name)
    dtype = NUMPY_DTYPES[datatype]
    if budget is not None:  # numpy's first pass holds 8-byte values
        budget.take(count * max(8, dtype.itemsize), f"{count} elements of input '{name}'")
    if isinstance(data, ChunkedArray):
        array = _chunked_numbers(data, datatype, dtype, shape, count, name)
        if array is not None:
            return array
        data.restart()  # a case the pieces cannot say alone: numpy over the whole list
        data = data.to_list()
    try:
        raw = np.array(data)
    except (ValueError, OverflowError, TypeError):  # ragged nesting, or nesting too deep
        raw = None
    if raw is None or raw.size != count:
        got = "ragged or too deeply nested data" if raw is None else f"{raw.size} elements"
        raise InternalError(
            f"Unable to parse 'data': Shape does not match true shape of 'data' field for "
            f"input '{name}' (shape {shape} has {count} elements, data has {got})"
        )
    kind = raw.dtype.kind
    if count:
        if datatype == "BOOL":
            if kind != "b":
                raise InvalidArgument(f"BOOL input '{name}' must hold true/false in JSON 'data'")
        elif kind not in "iuf" or _has_bool(data, raw.ndim):
            # numpy reads true as 1 beside numbers; Triton refuses a boolean in a number tensor
            raise InvalidArgument(f"{datatype} input '{name}' must hold numbers in JSON 'data'")
        elif kind == "f" and dtype.kind in "iu":
            # numpy would truncate 1.5 to 1; Triton refuses a non-integer for an integer tensor
            raise InvalidArgument(f"{datatype} input '{name}' must hold integers in JSON 'data'")
        elif kind in "iu" and dtype.kind in "iu":
            info = np.iinfo(dtype)
            if raw.min() < info.min or raw.max() > info.max:
                raise InvalidArgument(f"data of input '{name}' does not fit {datatype}")
    return raw.astype(dtype, copy=False).reshape(shape)


def _chunked_numbers(
    data: ChunkedArray, datatype: str, dtype: np.dtype, shape: list[int], count: int, name: str
) -> np.ndarray | None:
    """A number tensor from a large JSON array, converted piece by piece into its array (one
    piece's Python numbers alive at a time), with the errors of the whole list's conversion.
    None where numpy over the whole list could answer otherwise than over its pieces (a piece
    numpy cannot convert to int64, float64 or bool, or integers beyond float64's exactness
    for a float tensor): the caller converts the whole list then."""
    out = np.empty(count, dtype) if count <= data.nbytes else None  # each element: 2 bytes+
    filled = 0
    inner: tuple[int, ...] | None = None  # every element's shape (rows of nested data)
    kinds: set[str] = set()
    bools = wide = False
    for piece in data.pieces():
        try:
            raw = np.array(piece)
        except (ValueError, OverflowError, TypeError):
            return None
        if raw.dtype not in _PLAIN or (inner is not None and raw.shape[1:] != inner):
            return None
        inner = raw.shape[1:]
        kind = raw.dtype.kind
        kinds.add(kind)
        bools = bools or kind == "b" or _has_bool(piece, raw.ndim)
        del piece
        if kind == "i" and raw.size:
            if dtype.kind == "f" and max(-int(raw.min()), int(raw.max())) > 1 << 53:
                return None  # int64 -> float32 and int64 -> float64 -> float32 may differ
            if dtype.kind in "iu":
                info = np.iinfo(dtype)
                wide = wide or raw.min() < info.min or raw.max() > info.max
        fits = not (kind == "f" and dtype.kind in "iub")  # else refused below: not cast
        if out is not None and fits and filled + raw.size <= count:
            out[filled : filled + raw.size] = raw.reshape(-1)
        filled += raw.size
    if filled != count or out is None:
        raise InternalError(
            f"Unable to parse 'data': Shape does not match true shape of 'data' field for "
            f"input '{name}' (shape {shape} has {count} elements, data has {filled} elements)"
        )
    if count:  # the checks of json_to_array, on the kinds the whole list would have had
        whole = "b" if kinds == {"b"} else "f" if "f" in kinds else "i"
        if datatype == "BOOL":
            if whole != "b":
                raise InvalidArgument(f"BOOL input '{name}' must hold true/false in JSON 'data'")
        elif bools:
            raise InvalidArgument(f"{datatype} input '{name}' must hold numbers in JSON 'data'")
        elif whole == "f" and dtype.kind in "iu":
            raise InvalidArgument(f"{datatype} input '{name}' must hold integers in JSON 'data'")
        elif wide:
            raise InvalidArgument(f"data of input '{name}' does not fit {datatype}")
    return out.reshape(shape)


#: what a piece may convert to for :func:`_chunked_numbers`
_PLAIN = (np.dtype(np.int64), np.dtype(np.float64), np.dtype(np.bool_))


def _has_bool(data: Any, depth: int) -> bool:
    """Whether JSON ``data`` (nested ``depth`` deep) holds true or false anywhere (~15 ns an
    element, in C)."""
    if depth == 0:
        return isinstance(data, bool)
    if depth == 1:
        flat = data
    elif depth == 2:
        flat = itertools.chain.from_iterable(data)
    else:
        flat = np.array(data, dtype=np.object_).reshape(-1)
    return bool in map(type, flat)


def _json_bytes(data: Any, shape: list[int], count: int, name: str) -> np.ndarray:
    """A BYTES tensor from JSON strings; ``data`` (the parsed request's list) is emptied."""
    if not isinstance(data, list):
        data = [data]
    flat = data
    if list in map(type, data):
        flat = []
        _flatten(data, flat, 0)
        data.clear()  # the strings live in ``flat`` alone now
    if len(flat) != count:
        raise InternalError(
            f"Unable to parse 'data': Shape does not match true shape of 'data' field for "
            f"input '{name}' (shape {shape} has {count} elements, data has {len(flat)})"
        )
    array = np.empty(count, dtype=np.object_)
    encode = str.encode
    for start in range(0, count, _CHUNK):
        chunk = flat[start : start + _CHUNK]
        flat[start : start + len(chunk)] = _NONES[: len(chunk)]  # the chunk's strings go with it
        try:
            array[start : start + len(chunk)] = list(map(encode, chunk))
        except TypeError as exc:  # an element that is not a string
            raise InvalidArgument(f"BYTES input '{name}' must hold strings in JSON 'data'") from exc
    return array.reshape(shape)


def _chunked_bytes(data: ChunkedArray, shape: list[int], count: int, name: str) -> np.ndarray:
    """A BYTES tensor from a large JSON array, encoded piece by piece as it is parsed (the
    strings of one piece alive at a time); the errors are those of :func:`_json_bytes`."""
    # every element takes two bytes of JSON at least: more than that cannot match
    array = np.empty(count, dtype=np.object_) if count <= data.nbytes else None
    filled = 0
    strings = True
    encode = str.encode
    for piece in data.pieces():
        if list in map(type, piece):
            flat: list = []
            _flatten(piece, flat, 0)
            piece = flat
        n = len(piece)
        if array is not None and strings and filled + n <= count:
            try:
                array[filled : filled + n] = list(map(encode, piece))
            except TypeError:  # an element that is not a string (said once the count is known)
                strings = False
        filled += n
        del piece
    if filled != count or array is None:
        raise InternalError(
            f"Unable to parse 'data': Shape does not match true shape of 'data' field for "
            f"input '{name}' (shape {shape} has {count} elements, data has {filled})"
        )
    if not strings:
        raise InvalidArgument(f"BYTES input '{name}' must hold strings in JSON 'data'")
    return array.reshape(shape)


def _flatten(data: list, out: list, depth: int) -> None:
    if depth > 100:
        raise InvalidArgument("JSON 'data' nesting is deeper than 100 levels")
    for x in data:
        if isinstance(x, list):
            _flatten(x, out, depth + 1)
        else:
            out.append(x)


def json_data(array: np.ndarray, datatype: str) -> Any:
    """An output's JSON ``data`` value, for ``orjson.dumps`` (with OPT_SERIALIZE_NUMPY)."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        if len(flat) <= _CHUNK:
            return _strings(flat)
        # in chunks, as one pre-serialised JSON array: never a list of every string at once
        parts = [b"["]
        for i in range(0, len(flat), _CHUNK):
            if i:
                parts.append(b",")
            parts.append(orjson.dumps(_strings(flat[i : i + _CHUNK]))[1:-1])
        parts.append(b"]")
        return orjson.Fragment(b"".join(parts))
    if datatype in ("FP16", "BF16"):
        return flat.astype(np.float32).tolist()
    if not flat.flags.c_contiguous or flat.dtype.byteorder == ">":
        flat = np.ascontiguousarray(flat, dtype=flat.dtype.newbyteorder("="))
    return flat


def _strings(flat: np.ndarray) -> list[str]:
    return [
        x.decode("utf-8", "replace") if isinstance(x, (bytes, bytearray)) else str(x) for x in flat
    ]
