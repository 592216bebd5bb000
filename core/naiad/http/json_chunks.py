"""Large JSON bodies parsed in bounded steps, so that no single call holds the GIL for long.

orjson parses a whole body in one call that holds the GIL: ~0.15 s for 23 MiB, during which
every other request of the server waits. Here a large body is parsed in steps of about
:data:`WINDOW` bytes, between which other threads (the event loop among them) run:

1. a scan, window by window in numpy, finds the structure: where strings are (quotes not
   escaped by an odd run of backslashes), the depth of every bracket and comma outside them,
   and so the arrays (and objects) larger than a window whose elements are all smaller
   ("large arrays");
2. the body without its large arrays (a placeholder string in place of each) is parsed by
   orjson: the *skeleton*, small;
3. each large array is parsed in *pieces*: runs of its elements split at its own commas,
   each piece parsed by orjson as ``[piece]`` (``{piece}`` for an object). An input's
   ``"data"`` stays a :class:`ChunkedArray` that its decoder reads piece by piece (a BYTES
   tensor is encoded as it goes, numbers go straight into the tensor); any other large array
   is joined into a list, a large object's pieces into one dict (a repeated key keeps its
   last value, as in orjson).

The result is orjson's: the skeleton and every piece are orjson parses, and substituting
valid arrays for the placeholders of a valid skeleton gives a valid document. A malformed body
raises :class:`Malformed` with orjson's message and its position in the whole body (line,
column and character, as orjson counts them), found in steps too: the earliest error of the
skeleton and the pieces before it is the one orjson would report (an error the scan finds —
an unbalanced bracket or quote, nesting deeper than orjson's 1024 — is reported where the
structure breaks, at or after the first error). An array overwritten by a repeated key is
checked and dropped, as orjson drops it. What is left to one orjson call (:class:`Invalid`)
is a skeleton over :data:`_MAX_SKELETON` (many containers each under a window, e.g. dozens of
200 KiB inputs: bounded by --http-max-input-size) and a placeholder found twice.
"""

from __future__ import annotations

import bisect
import codecs
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
#: orjson's nesting limit ("depth limit exceeded")
_MAX_DEPTH = 1024

_QUOTE, _BACKSLASH, _COMMA, _OPEN_LIST = ord('"'), ord("\\"), ord(","), ord("[")
#: +1 opens, -1 closes, 0 a comma; 2 for the rest (not structural)
_DELTA = np.full(256, 2, dtype=np.int8)
_DELTA[[ord("["), ord("{")]] = 1
_DELTA[[ord("]"), ord("}")]] = -1
_DELTA[_COMMA] = 0


T = TypeVar("T")


class Invalid(Exception):
    """The body does not fit the chunked scheme: parse it whole with orjson."""


class Malformed(Exception):
    """The body is not JSON: orjson's message, at ``byte`` of the body (made a line, column
    and character position by :meth:`locate`)."""

    def __init__(self, msg: str, byte: int) -> None:
        super().__init__(msg)
        self.msg = msg
        self.byte = byte
        self.text = msg

    def locate(self, view: memoryview, window: int) -> Malformed:
        """``self``, its text in orjson's form: ``msg: line L column C (char N)``."""
        lines = chars = 0
        last_nl = -1  # the character index of the last newline before the error
        for w0 in range(0, self.byte, window):  # in steps: other threads run between
            b = np.frombuffer(view, np.uint8, count=min(window, self.byte - w0), offset=w0)
            starts = (b & 0xC0) != 0x80  # a character starts at every byte but continuations
            nl = np.flatnonzero(b == 0x0A)
            if len(nl):
                last_nl = chars + int(np.count_nonzero(starts[: nl[-1]]))
                lines += len(nl)
            chars += int(np.count_nonzero(starts))
        self.text = f"{self.msg}: line {lines + 1} column {chars - last_nl} (char {chars})"
        return self

    def __str__(self) -> str:
        return self.text


def _orjson_error(exc: orjson.JSONDecodeError, text: bytes, base: int) -> Malformed:
    """orjson's error for ``text`` (found at byte ``base`` of the body) as a Malformed of the
    body; orjson counts characters, the body is addressed in bytes."""
    starts = np.flatnonzero((np.frombuffer(text, np.uint8) & 0xC0) != 0x80)
    at = int(starts[exc.pos]) if exc.pos < len(starts) else len(text)
    return Malformed(exc.msg, base + at)


class ChunkedArray:
    """A large JSON array of the body, parsed piece by piece on demand (each piece once)."""

    __slots__ = ("_view", "_bounds", "_next")

    def __init__(self, view: memoryview, bounds: list[int]) -> None:
        self._view = view
        #: the array's ``[``, the commas between pieces, its ``]``
        self._bounds = bounds
        self._next = 0

    def pieces(self) -> Iterator[Any]:
        """The elements, as one list per piece (a piece already read is not read again)."""
        bounds = self._bounds
        while self._next < len(bounds) - 1:
            i = self._next
            self._next = i + 1
            yield _piece(self._view, bounds, i)

    def restart(self) -> None:
        """Read the pieces again from the first."""
        self._next = 0

    @property
    def start(self) -> int:
        return self._bounds[0]

    @property
    def nbytes(self) -> int:
        return self._bounds[-1] - self._bounds[0]

    @property
    def is_list(self) -> bool:
        """An array (else an object)."""
        return self._view[self._bounds[0]] == _OPEN_LIST

    def to_list(self) -> list:
        out: list = []
        for piece in self.pieces():
            out += piece
        return out

    def value(self) -> Any:
        """The whole array, or object (a key repeated across pieces keeps its last value)."""
        if self.is_list:
            return self.to_list()
        out: dict = {}
        for piece in self.pieces():
            out.update(piece)
        return out

    def check(self, before: int | None = None) -> None:
        """Parse what was not read yet (raising :class:`Malformed` where orjson refuses it);
        with ``before``, only the pieces that start before that byte of the body."""
        bounds = self._bounds
        while self._next < len(bounds) - 1 and (before is None or bounds[self._next] < before):
            i = self._next
            self._next = i + 1
            _piece(self._view, bounds, i)


def _piece(view: memoryview, bounds: list[int], i: int) -> Any:
    """Piece ``i``: the elements (or members) between ``bounds[i]`` and ``bounds[i + 1]``."""
    is_list = view[bounds[0]] == _OPEN_LIST
    close = b"]" if is_list else b"}"
    text = b"".join((b"[" if is_list else b"{", view[bounds[i] + 1 : bounds[i + 1]], close))
    try:
        items = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        err = _orjson_error(exc, text, bounds[i])  # text[0] stands for bounds[i]
        last = i == len(bounds) - 2
        if not last and err.msg == "trailing comma is not allowed":
            # a comma ends the piece: what follows it in the body is a comma, not the close
            if not bytes(view[err.byte + 1 : bounds[i + 1]]).strip():
                raise _empty(is_list, bounds[i + 1]) from None
        raise err from None
    if not items and len(bounds) > 2:  # an empty run between two commas, or after the last
        if i == len(bounds) - 2:
            raise Malformed("trailing comma is not allowed", bounds[i])  # "[1,]"
        raise _empty(is_list, bounds[i + 1])  # "[1,,2]"
    return items


def _empty(is_list: bool, at: int) -> Malformed:
    """A comma where an element (or member) should be."""
    return Malformed(
        f"unexpected character, expected {'a JSON value' if is_list else 'a string key'}", at
    )


def loads(body: bytes | memoryview, window: int | None = None) -> tuple[Any, list[ChunkedArray]]:
    """``body`` parsed; the arrays left as :class:`ChunkedArray` (an input's ``"data"``)
    come with it and must be read or :meth:`~ChunkedArray.check`-ed to know the body valid.

    Raises :class:`Malformed` (located) when the body is not JSON, :class:`Invalid` when it
    must be parsed whole instead.
    """
    window = window or WINDOW
    view = _view(body)
    try:
        return _loads(view, window)
    except Malformed as exc:
        raise exc.locate(view, window) from None


def _view(body: bytes | memoryview) -> memoryview:
    return memoryview(body).cast("B") if not isinstance(body, bytes) else memoryview(body)


def _loads(view: memoryview, window: int) -> tuple[Any, list[ChunkedArray]]:
    regions, splits = _scan(view, window)
    if not regions:
        raise Invalid
    nonce = os.urandom(8).hex()
    prefix = f"\x00naiad-{nonce}:"
    parts: list[bytes | memoryview] = []
    segments: list[tuple[int, int]] = []  # (skeleton offset, body offset; ~o for placeholders)
    end = at = 0
    for i, (o, c, _) in enumerate(regions):
        placeholder = b'"\\u0000naiad-%s:%d"' % (nonce.encode(), i)
        segments += [(at, end), (at + o - end, ~o)]
        at += o - end + len(placeholder)
        parts += [view[end:o], placeholder]
        end = c + 1
    segments.append((at, end))
    parts.append(view[end:])
    skeleton = b"".join(parts)
    del parts
    if len(skeleton) > _MAX_SKELETON:
        raise Invalid
    arrays = [ChunkedArray(view, _bounds(o, c, level, splits)) for o, c, level in regions]
    try:
        obj = orjson.loads(skeleton)
    except orjson.JSONDecodeError as exc:
        err = _orjson_error(exc, skeleton, 0)
        k = bisect.bisect_right(segments, (err.byte, 1 << 62)) - 1
        s_at, b_at = segments[k]
        err.byte = b_at + err.byte - s_at if b_at >= 0 else ~b_at
        raise _first(arrays, err) from None
    if obj == prefix + "0" and len(arrays) == 1:  # the body is one large array
        return arrays[0].value(), []
    try:
        kept, dropped = _substitute(obj, prefix, arrays)
        for array in dropped:  # overwritten by a repeated key: must be JSON all the same
            array.check()
    except Malformed as exc:
        raise _first(arrays, exc) from None
    return obj, kept


def _first(arrays: list[ChunkedArray], err: Malformed) -> Malformed:
    """The earliest error in the body: ``err``, or one in the pieces before it not read yet."""
    for array in arrays:
        if array.start >= err.byte:
            break
        try:
            array.check(before=err.byte)
        except Malformed as earlier:
            return earlier
    return err


def build(
    body: memoryview, make: Callable[[Any], T], whole: Callable[[], Any], window: int | None = None
) -> T:
    """``make`` of the body parsed in steps, or of ``whole()`` (one orjson call) where the body
    does not fit. A syntax error anywhere in the body is the answer whatever else ``make``
    finds wrong, as when the body is parsed whole first: when ``make`` raises, what it did
    not read is checked before its error goes on. Raises :class:`Malformed` (located)."""
    window = window or WINDOW
    view = _view(body)
    try:
        obj, chunked = loads(view, window)
    except Invalid:
        return make(whole())
    try:
        try:
            result = make(obj)
        except Malformed as exc:
            raise _first(chunked, exc) from None
        except Exception:
            for array in chunked:
                array.check()
            raise
        for array in chunked:
            array.check()
    except Malformed as exc:
        raise exc.locate(view, window) from None
    return result


def loads_all(body: bytes | memoryview, window: int | None = None) -> Any:
    """``body`` as ``orjson.loads`` gives it (value or error), parsed in steps where it can;
    a malformed body raises :class:`Malformed` (orjson's message and position)."""
    return build(_view(body), _materialise, lambda: orjson.loads(body), window)


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


def _substitute(
    obj: Any, prefix: str, arrays: list[ChunkedArray]
) -> tuple[list[ChunkedArray], list[ChunkedArray]]:
    """Put the large arrays in place of their placeholders in the parsed skeleton: an input's
    ``"data"`` as the ChunkedArray, anything else as a list. Returns the ChunkedArrays kept
    and those no placeholder was found for (overwritten by a repeated key)."""
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
                if key.startswith(prefix):  # a large array in a key's place: not JSON
                    at = arrays[int(key[len(prefix) :])].start
                    raise Malformed("unexpected character, expected a string key", at)
                array = take(value)
                if array is None:
                    stack.append(value)
                elif key == "data" and id(node) in data_slots and array.is_list:
                    node[key] = array
                    kept.append(array)
                else:
                    node[key] = array.value()
        elif isinstance(node, list):
            for i, value in enumerate(node):
                array = take(value)
                if array is None:
                    stack.append(value)
                else:
                    node[i] = array.value()
    return kept, [array for array, seen in zip(arrays, found, strict=True) if not seen]


def _scan(view: memoryview, window: int) -> tuple[list[tuple[int, int, int]], Any]:
    """The large arrays that hold no large array, as ``(start, end, level)`` in body order,
    and the split commas ``(positions, depths)``: in each window, the last comma of each depth.

    A bracket whose partner lies in another window is a candidate (every array larger than a
    window has both its brackets among them); the candidates are matched with a stack.
    """
    in_string = 0  # the parity of real quotes so far
    depth = 0
    run = 0  # backslashes ending the previous window
    candidates: list[tuple[int, int, int, int]] = []  # (position, +1 open / -1 close, byte, level)
    split_pos: list[np.ndarray] = []
    split_depth: list[np.ndarray] = []
    n_all = len(view)
    utf8 = codecs.getincrementaldecoder("utf-8")()
    for w0 in range(0, n_all, window):
        b = np.frombuffer(view, np.uint8, count=min(window, n_all - w0), offset=w0)
        try:  # orjson checks the whole body first, and says so at its start
            utf8.decode(view[w0 : w0 + window], final=w0 + window >= n_all)
        except UnicodeDecodeError:
            raise Malformed("str is not valid UTF-8: surrogates not allowed", 0) from None
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
        if after.min() < 0:  # a bracket closes what is not open
            at = int(s[np.argmax(after < 0)]) + w0
            raise Malformed("unexpected content after document", at)
        if after.max() > _MAX_DEPTH:  # where orjson stops: just after the bracket too deep
            raise Malformed("depth limit exceeded", int(s[np.argmax(after > _MAX_DEPTH)]) + w0 + 1)
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
    if in_string or depth:
        raise Malformed("unexpected end of data", n_all)
    arrays: list[tuple[int, int, int]] = []
    stack: list[tuple[int, int, int]] = []
    for pos, kind, byte, level in candidates:
        if kind == 1:
            stack.append((pos, byte, level))
            continue
        if not stack:
            raise Malformed("unexpected content after document", pos)
        o, ob, olevel = stack.pop()
        if ob + 2 != byte:  # "[" + 2 == "]", "{" + 2 == "}"
            raise Malformed(f"unexpected character, expected ',' or '{chr(ob + 2)}'", pos)
        if pos - o > window:
            arrays.append((o, pos, olevel))
    if stack:
        raise Malformed("unexpected end of data", n_all)
    arrays.sort()
    # the large arrays with no large array inside
    ends = [a[0] for a in arrays[1:]] + [len(view)] if arrays else []
    leaves = [a for a, nxt in zip(arrays, ends, strict=True) if nxt > a[1]]
    if split_pos:
        splits = (np.concatenate(split_pos), np.concatenate(split_depth))
    else:
        splits = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    return leaves, splits
