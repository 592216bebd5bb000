"""Large JSON bodies parsed in bounded steps, so that no single call holds the GIL for long.

orjson parses a whole body in one call that holds the GIL: ~0.15 s for 23 MiB, during which
every other request of the server waits. Here a large body is parsed in steps of about
:data:`WINDOW` bytes, between which other threads (the event loop among them) run:

1. a scan, window by window in numpy, finds the structure: where strings are (quotes not
   escaped by an odd run of backslashes), the depth of every bracket and comma outside them,
   and so the arrays larger than a window whose elements are all smaller ("large arrays");
2. the body without its large arrays (a placeholder string in place of each) is parsed by
   orjson: the *skeleton*, small;
3. each large array is parsed in *pieces*: runs of its elements split at its own commas,
   each piece parsed by orjson as ``[piece]``. An input's ``"data"`` stays a
   :class:`ChunkedArray` that its decoder reads piece by piece (a BYTES tensor is encoded as
   it goes, never holding every string); any other large array is joined into a list.

The result is orjson's: the skeleton and every piece are orjson parses, and substituting
valid arrays for the placeholders of a valid skeleton gives a valid document. Whatever does
not fit the scheme — a body the scan finds malformed, a piece or skeleton orjson refuses, a
placeholder found twice, as a key or not at all, nesting deeper than :data:`_MAX_DEPTH` —
raises :class:`Invalid`, and the caller parses the whole body with orjson instead: the answer
(a value, or orjson's error message) is then orjson's own, at the old cost.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import orjson

#: bytes scanned, and about the bytes parsed, in one step (~1 ms of orjson)
WINDOW = 1 << 18
#: bodies smaller than this are parsed in one orjson call
CHUNKED_FROM = 1 << 20
#: a larger skeleton (the body less its large arrays) is not worth it: the body is parsed whole
_MAX_SKELETON = 1 << 20
#: deeper nesting is left to orjson (it has its own limit and message)
_MAX_DEPTH = 256

_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
#: +1 opens, -1 closes, 0 a comma; 2 for the rest (not structural)
_DELTA = np.full(256, 2, dtype=np.int8)
_DELTA[[ord("["), ord("{")]] = 1
_DELTA[[ord("]"), ord("}")]] = -1
_DELTA[_COMMA] = 0


T = TypeVar("T")


class Invalid(Exception):
    """The body does not fit the chunked scheme: parse it whole with orjson."""


class ChunkedArray:
    """A large JSON array of the body, parsed piece by piece on demand (each piece once)."""

    __slots__ = ("_view", "_bounds", "_next")

    def __init__(self, view: memoryview, bounds: list[int]) -> None:
        self._view = view
        #: the array's ``[``, the commas between pieces, its ``]``
        self._bounds = bounds
        self._next = 0

    def pieces(self) -> Iterator[list]:
        """The elements, as one list per piece (a piece already read is not read again)."""
        bounds = self._bounds
        while self._next < len(bounds) - 1:
            i = self._next
            self._next = i + 1
            yield _piece(self._view[bounds[i] + 1 : bounds[i + 1]])

    @property
    def nbytes(self) -> int:
        return self._bounds[-1] - self._bounds[0]

    def to_list(self) -> list:
        out: list = []
        for piece in self.pieces():
            out += piece
        return out

    def check(self) -> None:
        """Parse what was not read yet (raising :class:`Invalid` where orjson refuses it)."""
        for _ in self.pieces():
            pass


def _piece(text: memoryview) -> list:
    try:
        items = orjson.loads(b"".join((b"[", text, b"]")))
    except orjson.JSONDecodeError:
        raise Invalid from None
    if not items:  # an empty run between two commas, or after the last: "[1,,2]", "[1,]"
        raise Invalid
    return items


def loads(body: bytes | memoryview, window: int | None = None) -> tuple[Any, list[ChunkedArray]]:
    """``body`` parsed; the arrays left as :class:`ChunkedArray` (an input's ``"data"``)
    come with it and must be read or :meth:`~ChunkedArray.check`-ed to know the body valid.

    Raises :class:`Invalid` when the body must be parsed whole instead.
    """
    window = window or WINDOW
    view = memoryview(body).cast("B") if not isinstance(body, bytes) else memoryview(body)
    regions, splits = _scan(view, window)
    if not regions:
        raise Invalid
    nonce = os.urandom(8).hex()
    prefix = f"\x00naiad-{nonce}:"
    parts: list[bytes | memoryview] = []
    end = 0
    for i, (o, c, _) in enumerate(regions):
        parts += [view[end:o], b'"\\u0000naiad-%s:%d"' % (nonce.encode(), i)]
        end = c + 1
    parts.append(view[end:])
    skeleton = b"".join(parts)
    del parts
    if len(skeleton) > _MAX_SKELETON:
        raise Invalid
    try:
        obj = orjson.loads(skeleton)
    except orjson.JSONDecodeError:
        raise Invalid from None
    arrays = [ChunkedArray(view, _bounds(o, c, level, splits)) for o, c, level in regions]
    if obj == prefix + "0" and len(arrays) == 1:  # the body is one large array
        return arrays[0].to_list(), []
    return obj, _substitute(obj, prefix, arrays)


def build(body: memoryview, make: Callable[[Any], T], whole: Callable[[], Any]) -> T:
    """``make`` of the body parsed in steps, or of ``whole()`` (one orjson call) where the body
    does not fit. A syntax error anywhere in the body is the answer whatever else ``make``
    finds wrong, as when the body is parsed whole first: when ``make`` raises, what it did
    not read is checked before its error goes on."""
    try:
        obj, chunked = loads(body)
        try:
            result = make(obj)
        except Invalid:
            raise
        except Exception:
            for array in chunked:
                array.check()
            raise
        for array in chunked:
            array.check()
        return result
    except Invalid:
        return make(whole())


def loads_all(body: bytes | memoryview, window: int | None = None) -> Any:
    """``body`` as ``orjson.loads`` gives it (value or error), parsed in steps where it can."""
    try:
        return _materialise(loads(body, window)[0])
    except Invalid:
        return orjson.loads(body)


def _materialise(obj: Any) -> Any:
    """``obj`` with every ChunkedArray (an input's data) made a list."""
    for item in obj.get("inputs", []) if isinstance(obj, dict) else []:
        if isinstance(item, dict) and isinstance(item.get("data"), ChunkedArray):
            item["data"] = item["data"].to_list()
    return obj


def _bounds(o: int, c: int, level: int, splits: tuple[np.ndarray, np.ndarray]) -> list[int]:
    pos, depth = splits
    lo, hi = np.searchsorted(pos, [o, c])
    inside = pos[lo:hi]
    return [o, *inside[depth[lo:hi] == level].tolist(), c]


def _substitute(obj: Any, prefix: str, arrays: list[ChunkedArray]) -> list[ChunkedArray]:
    """Put the large arrays in place of their placeholders in the parsed skeleton: an input's
    ``"data"`` as the ChunkedArray, anything else as a list. Returns the ChunkedArrays kept."""
    found = [False] * len(arrays)
    kept: list[ChunkedArray] = []

    def take(value: Any) -> ChunkedArray | None:
        if type(value) is not str or not value.startswith(prefix):
            return None
        i = int(value[len(prefix) :])
        if found[i]:
            raise Invalid
        found[i] = True
        return arrays[i]

    data_slots = set()
    if isinstance(obj, dict) and isinstance(obj.get("inputs"), list):
        data_slots = {id(x) for x in obj["inputs"] if isinstance(x, dict)}
    stack: list[Any] = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key.startswith(prefix):
                    raise Invalid  # a large "array" in a key's place: not JSON
                array = take(value)
                if array is None:
                    stack.append(value)
                elif key == "data" and id(node) in data_slots:
                    node[key] = array
                    kept.append(array)
                else:
                    node[key] = array.to_list()
        elif isinstance(node, list):
            for i, value in enumerate(node):
                array = take(value)
                if array is None:
                    stack.append(value)
                else:
                    node[i] = array.to_list()
    if not all(found):
        raise Invalid  # overwritten by a repeated key: orjson's whole parse says what is kept
    return kept


def _scan(view: memoryview, window: int) -> tuple[list[tuple[int, int, int]], Any]:
    """The large arrays that hold no large array, as ``(start, end, level)`` in body order,
    and the split commas ``(positions, depths)``: in each window, the last comma of each depth.

    A bracket whose partner lies in another window is a candidate (every array larger than a
    window has both its brackets among them); the candidates are matched with a stack.
    """
    in_string = 0  # the parity of real quotes so far
    depth = 0
    run = 0  # backslashes ending the previous window
    max_depth = 0
    candidates: list[tuple[int, int, int, int]] = []  # (position, +1 open / -1 close, byte, level)
    split_pos: list[np.ndarray] = []
    split_depth: list[np.ndarray] = []
    n_all = len(view)
    for w0 in range(0, n_all, window):
        b = np.frombuffer(view, np.uint8, count=min(window, n_all - w0), offset=w0)
        n = len(b)
        quotes = np.flatnonzero(b == _QUOTE)
        bs = b == _BACKSLASH
        if bs.any():
            last = np.where(bs, -1, np.arange(n))
            np.maximum.accumulate(last, out=last)
            prev = quotes - 1
            before = np.where(prev >= 0, last[np.maximum(prev, 0)], -1)
            runs = np.where(before >= 0, prev - before, prev + 1 + run)
            real = quotes[(runs & 1) == 0]
            run = n - 1 - last[-1] if last[-1] >= 0 else n + run
        else:
            real = quotes if not (run & 1) or not len(quotes) or quotes[0] else quotes[1:]
            run = 0
        delta = _DELTA[b]
        s = np.flatnonzero(delta != 2)
        if len(s):
            s = s[((np.searchsorted(real, s) + in_string) & 1) == 0]
        in_string = (in_string + len(real)) & 1
        if not len(s):
            continue
        d = delta[s].astype(np.int64)
        after = depth + np.cumsum(d)
        before_d = after - d
        if after.min() < 0:
            raise Invalid
        max_depth = max(max_depth, int(after.max()))
        commas = d == 0
        if commas.any():
            cp, cd = s[commas], after[commas]
            levels, last_i = np.unique(cd[::-1], return_index=True)
            order = np.sort(len(cd) - 1 - last_i)
            split_pos.append(cp[order] + w0)
            split_depth.append(cd[order])
        # brackets whose partner is outside this window: candidates for large arrays
        suffix = np.minimum.accumulate(after[::-1])[::-1]
        later = np.append(suffix[1:], np.iinfo(np.int64).max)
        prefix = np.minimum.accumulate(np.concatenate(([depth], after)))[:-1]
        opens = (d == 1) & (later > before_d)
        closes = (d == -1) & (prefix > after)
        for i in np.flatnonzero(opens | closes).tolist():
            candidates.append((int(s[i]) + w0, int(d[i]), int(b[s[i]]), int(after[i])))
        depth = int(after[-1])
    if in_string or depth or max_depth > _MAX_DEPTH:
        raise Invalid
    arrays: list[tuple[int, int, int]] = []
    stack: list[tuple[int, int, int]] = []
    for pos, kind, byte, level in candidates:
        if kind == 1:
            stack.append((pos, byte, level))
            continue
        if not stack:
            raise Invalid
        o, ob, olevel = stack.pop()
        if ob + 2 != byte:  # "[" + 2 == "]", "{" + 2 == "}"
            raise Invalid
        if ob == ord("[") and pos - o > window:
            arrays.append((o, pos, olevel))
    if stack:
        raise Invalid
    arrays.sort()
    # the large arrays with no large array inside
    ends = [a[0] for a in arrays[1:]] + [len(view)] if arrays else []
    leaves = [a for a, nxt in zip(arrays, ends, strict=True) if nxt > a[1]]
    if split_pos:
        splits = (np.concatenate(split_pos), np.concatenate(split_depth))
    else:
        splits = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    return leaves, splits
