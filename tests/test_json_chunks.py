"""Large JSON bodies parsed in steps (naiad.http.json_chunks) give exactly orjson's answer.

Property-style: many generated bodies — strings with escapes and non-ASCII text, nested
arrays, numbers, booleans, whitespace, and mutated (malformed) copies — parsed with windows of
a few bytes, so that every split lands everywhere; the value, or the error message, must be
orjson's. Then whole V2 requests through ``codec.parse_infer_request`` parsed in steps and in
one call must build the same tensors or raise the same error.
"""

from __future__ import annotations

import random
import re

import numpy as np
import orjson
import pytest
from naiad.errors import NaiadError
from naiad.http import codec, json_chunks

_CHARS = ["a", "b", '"', "\\", "é", "\u2603", "\U0001f600", " ", ",", "[", "]", "{", "}", ":"]
_CHARS += ["\n", "\t", "\\u", "/"]


def _string(r: random.Random) -> str:
    return "".join(r.choice(_CHARS) for _ in range(r.randint(0, 6)))


def _value(r: random.Random, depth: int) -> object:
    k = r.random()
    if depth > 3 or k < 0.5:
        return r.choice(
            [
                lambda: r.randint(-(10**6), 10**6),
                lambda: r.random() * 1e6,
                lambda: _string(r),
                lambda: True,
                lambda: False,
                lambda: None,
                lambda: 2**64 - 1,
                lambda: -(2**63),
            ]
        )()
    if k < 0.8:
        return [_value(r, depth + 1) for _ in range(r.randint(0, 40 if depth < 2 else 5))]
    return {_string(r): _value(r, depth + 1) for _ in range(r.randint(0, 4))}


def _data(r: random.Random) -> object:
    kind = r.random()
    if kind < 0.4:
        return [_string(r) for _ in range(r.randint(0, 300))]
    if kind < 0.7:
        rows, cols = r.randint(0, 30), r.randint(1, 20)
        return [[r.randint(-5, 5) for _ in range(cols)] for _ in range(rows)]
    return _value(r, 0)


def _body(r: random.Random) -> bytes:
    inputs = [
        {
            "name": _string(r),
            "datatype": "BYTES",
            "shape": [1],
            "data": _data(r),
            "parameters": {"p": _value(r, 1)},
        }
        for _ in range(r.randint(1, 3))
    ]
    obj = {"id": _string(r), "inputs": inputs, "outputs": [_value(r, 1)]}
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 if r.random() < 0.5 else 0)


def _mutate(r: random.Random, text: bytes) -> bytes:
    t = bytearray(text)
    for _ in range(r.randint(1, 3)):
        i = r.randrange(len(t))
        op = r.random()
        if op < 0.3:
            del t[i]
        elif op < 0.6:
            t.insert(i, r.choice(b'[]{},:"\\ 1a'))
        else:
            t[i] = r.choice(b'[]{},:"\\ 1a\x00\xff')
    return bytes(t)


_POSITION = re.compile(r".: line \d+ column \d+ \(char \d+\)$")


def _outcome(parse, body: bytes) -> tuple[str, bytes | str]:
    try:
        return "value", orjson.dumps(parse(body))  # dumps tells true from 1 and 1.0 from 1
    except (orjson.JSONDecodeError, json_chunks.Malformed) as exc:
        return "error", str(exc)


@pytest.mark.parametrize("seed", range(3))
def test_generated_bodies_parse_as_orjson_parses_them(seed):
    r = random.Random(seed)
    chunked = same_error = errors = 0
    for _ in range(200):
        body = _body(r)
        if r.random() < 0.4:
            body = _mutate(r, body)
        window = r.choice([24, 64, 200])
        expected = _outcome(orjson.loads, body)
        got = _outcome(lambda b, w=window: json_chunks.loads_all(b, w), body)
        if expected[0] == "value":
            assert got == expected, body
        else:  # found in steps: orjson's form, and mostly orjson's very message and position
            errors += 1
            same_error += got == expected
            assert got[0] == "error" and _POSITION.search(got[1]), (body, got)
        try:
            json_chunks.loads(body, window)
            chunked += 1
        except (json_chunks.Invalid, json_chunks.Malformed):
            pass
    assert chunked > 60  # most bodies were parsed in steps, not handed to orjson whole
    assert same_error > errors // 3, (same_error, errors)  # the scan reports where brackets break


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": [{"data": [1,,2]}]}',
        b'{"inputs": [{"data": [1,2,]}]}',
        b'{"inputs": [{"data": [,1,2]}]}',
        b'{"inputs": [{"data": [1 2]}]}',
        b'{"inputs": [{"data": ["a\\"", "b\\\\", "c\\\\\\"d"]}]}',
        b'{"inputs": [{"data": ["\\\\", "\\"", "]", "[", ",", "\\u005d"]}]}',
        b'{"inputs": [{"data": [[1, [2, [3]]], [4], []]}]}',
        b'{"inputs": [{"data": [1, 2], "data": [3]}]}',
        b'{"inputs": [{"data": [1, 2]}], "inputs": []}',
        b"{[1, 2, 3]: 1}",
        b"[1, 2, 3, 4, 5, 6, 7, 8]",
        b'{"inputs": [{"data": [1, 2]}]',
        b'{"inputs": [{"data": [1, 2]]}',
        b'{"inputs": [{"data": [1, 2}]}',
        b'{"inputs": [{"data": ["open]}]}',
        b'{"inputs": [{"data": [1e400, 2]}]}',
        b'{"inputs": [{"data": [true, false, null]}]}  ',
        b'{"inputs": [{"data": [1, 2]}]} x',
        b'{"inputs": [{"data": [1, 2]}]}\xff',
        b'{"inputs": [{"data": ["\xff\xfe", 2]}]}',
        b'{"inputs": [], "p": {"a": 1, "b": [2, 3], "a": {"x": 3}, "c": "d", "b": 4}}',
        b'{"inputs": [], "p": {"a": 1, "b": 2,, "c": 3}}',
        b'{"inputs": [], "p": {"a": 1, "b": 2, "c": 3,}}',
        b'{"inputs": [], "p": {, "a": 1, "b": 2}}',
        b'{"inputs": [], "p": {"a" 1, "b": 2}}',
        b'{"inputs": [], "p": {"a": 1, "b": 2, "c": 3  }   }',
        b'{"inputs": [{"data": {"a": [1, 2, 3, 4, 5]}}]}',
    ],
)
@pytest.mark.parametrize("window", [1, 2, 3, 5, 8])
def test_edge_bodies_parse_as_orjson_parses_them(body, window):
    expected = _outcome(orjson.loads, body)
    got = _outcome(lambda b: json_chunks.loads_all(b, window), body)
    assert got == expected or _broken_at_or_after(expected, got)


def _char(message: str) -> int:
    return int(message.rsplit("(char ", 1)[1].rstrip(")"))


def _broken_at_or_after(expected: tuple, got: tuple) -> bool:
    """An error the scan found where the brackets break: orjson's form, at or after the
    first error orjson finds (the body is malformed there)."""
    return (
        expected[0] == got[0] == "error"
        and bool(_POSITION.search(got[1]))
        and _char(expected[1]) <= _char(got[1])
    )


def test_escapes_across_every_window_boundary():
    """Strings of quotes and backslash runs, at every offset against the windows."""
    r = random.Random(7)
    for _ in range(40):
        strings = ["\\" * r.randint(0, 5) + '"' * r.randint(0, 3) for _ in range(20)]
        body = orjson.dumps({"inputs": [{"data": strings}]})
        for window in (3, 4, 7, 16):
            for pad in range(window):
                padded = b" " * pad + body
                assert json_chunks.loads_all(padded, window) == orjson.loads(body)


def test_a_large_body_is_parsed_in_pieces_and_an_input_s_data_stays_lazy():
    n = 200_000
    body = b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [%d], "data": [' % n
    body += b'"ab\\"c\\\\", ' * (n - 1) + b'"\\u00e9"]}]}'
    obj, chunked = json_chunks.loads(body)
    data = obj["inputs"][0]["data"]
    assert chunked == [data] and isinstance(data, json_chunks.ChunkedArray)
    pieces = list(data.pieces())
    assert len(pieces) > 5
    assert max(len(orjson.dumps(p)) for p in pieces) < 2 * json_chunks.WINDOW
    assert [x for p in pieces for x in p] == orjson.loads(body)["inputs"][0]["data"]


# ---- whole requests: parsed in steps and in one call build the same thing -----------------


def _request(r: random.Random) -> bytes:
    inputs = []
    for i in range(r.randint(1, 2)):
        datatype = r.choice(["BYTES", "BYTES", "INT32", "FP32", "BOOL", "UINT8", "FP64", "INT64"])
        n = r.randint(0, 400)
        if datatype == "BYTES":
            data: list = [_string(r) for _ in range(n)]
        elif datatype == "BOOL":
            data = [r.random() < 0.5 for _ in range(n)]
        elif datatype.startswith("FP"):
            data = [r.random() * 100 if r.random() < 0.8 else r.randint(-9, 9) for _ in range(n)]
        else:
            data = [r.randint(0, 300) for _ in range(n)]
        shape = [n]
        if n and n % 2 == 0 and r.random() < 0.4:  # nested rows
            data = [data[: n // 2], data[n // 2 :]]
            shape = [2, n // 2]
        k = r.random()
        if k < 0.1 and data:  # a wrong element count
            shape = [n + 1]
        elif k < 0.2 and data:  # a boolean, or a number among strings
            flat = data if not isinstance(data[0], list) else data[0]
            flat[r.randrange(len(flat))] = r.choice([True, 5, 1.5, None, "s"])
        elif k < 0.25 and data:  # too deep
            data = [[[[[[x]]]]] for x in data]
        elif k < 0.35 and data and datatype != "BYTES":  # an odd number among numbers
            flat = data if not isinstance(data[0], list) else data[0]
            flat[r.randrange(len(flat))] = r.choice(
                [2**60, -1, 1e300, 7, 2.5, 2**64 - 1, -(2**63), 300, True, None, "s"]
            )
        elif k < 0.4 and n > 4:  # rows of different lengths
            data = [data[:1], data[1:]] if r.random() < 0.5 else [data[:-1], data[-1:]]
            shape = [n]
        inputs.append({"name": f"in{i}", "datatype": datatype, "shape": shape, "data": data})
    if r.random() < 0.1:
        inputs.append(dict(inputs[0]))  # the same input twice
    body = orjson.dumps({"id": _string(r), "inputs": inputs})
    return _mutate(r, body) if r.random() < 0.2 else body


def _parse(body: bytes) -> tuple[str, object]:
    try:
        req, _plan = codec.parse_infer_request(body, None, "m", 1, max_decoded=1 << 30)
    except NaiadError as exc:
        return "error", (type(exc).__name__, exc.message)
    return "ok", {
        name: (a.dtype.str, a.shape, [x for x in a.reshape(-1).tolist()])
        for name, a in req.inputs.items()
    }


@pytest.mark.parametrize("seed", range(4))
def test_requests_in_steps_build_what_one_parse_builds(seed, monkeypatch):
    r = random.Random(seed)
    cases = [_request(r) for _ in range(200)]
    whole = [_parse(body) for body in cases]
    monkeypatch.setattr(json_chunks, "CHUNKED_FROM", 0)
    monkeypatch.setattr(json_chunks, "WINDOW", 48)
    prefix = "failed to parse the request JSON buffer: "
    for body, expected in zip(cases, whole, strict=True):
        got = _parse(body)
        if got != expected:  # a syntax error found in steps: Triton's form, a position in the body
            assert expected[1][1].startswith(prefix) and got[1][1].startswith(prefix), body
            assert _POSITION.search(got[1][1]) and got[1][0] == expected[1][0], body
    assert sum(1 for w in whole if w[0] == "error") > 20  # errors of every kind were compared


def test_bytes_in_steps_keep_escapes_and_unicode(monkeypatch):
    strings = ['a"b', "c\\d", "é\u2603\U0001f600", "", '\\\\"', "\n\t"] * 500
    body = orjson.dumps(
        {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [len(strings)], "data": strings}]}
    )
    monkeypatch.setattr(json_chunks, "CHUNKED_FROM", 0)
    monkeypatch.setattr(json_chunks, "WINDOW", 64)
    req, _plan = codec.parse_infer_request(body, None, "m", 1)
    array = req.inputs["s"]
    assert array.dtype == np.object_
    assert array.tolist() == [s.encode() for s in strings]


@pytest.mark.parametrize("bad", [b"1.", b"tru", b"1 2", b'"a\x01"', b"", b"[1}", b"-"], ids=repr)
def test_a_large_malformed_body_is_never_parsed_in_one_call(bad, monkeypatch):
    """A syntax error in a large array is found in its piece: orjson's message at the body's
    position, in Triton's form, and no orjson call ever sees more than a few windows."""
    n = 300_000
    data = b"[" + b"1.5, " * n + bad + b", 2.5" * 1000 + b"]"
    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [%d], "data": %s}]}' % (
        n + 1001,
        data,
    )
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        expected = str(exc)
    largest = []
    loads = orjson.loads

    def watched(text):
        largest.append(len(text))
        return loads(text)

    monkeypatch.setattr(orjson, "loads", watched)
    with pytest.raises(NaiadError) as info:
        codec.parse_infer_request(body, None, "m", 1)
    assert info.value.message == f"failed to parse the request JSON buffer: {expected}"
    assert max(largest) < 4 * json_chunks.WINDOW < len(body)


def test_numbers_in_steps_go_straight_into_the_array(monkeypatch):
    """A large number array is converted piece by piece: never made one list."""
    values = np.random.default_rng(0).standard_normal(100_000).tolist()
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1000, 100], "data": values}]}
    )
    monkeypatch.setattr(json_chunks.ChunkedArray, "to_list", None)  # would fail if called
    req, _plan = codec.parse_infer_request(body, None, "m", 1, max_decoded=1 << 30)
    expected = np.array(values).astype(np.float32).reshape(1000, 100)
    assert req.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(req.inputs["x"], expected)
