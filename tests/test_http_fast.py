"""The fast HTTP front (naiad.http.fast) against the same server with aiohttp alone.

Raw sockets, so the tests control exactly what goes over the wire: pipelining, bodies in pieces,
chunked bodies and other requests the front hands to aiohttp, and connections that close early.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import time

import numpy as np
import pytest
import tritonclient.http as httpclient

SIMPLE = "/v2/models/simple"


def _connect(srv) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Reader:
    """Reads HTTP/1.1 responses (Content-Length or chunked bodies) off one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError("closed")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError("closed")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self) -> tuple[int, dict[str, str], bytes]:
        status = self._line()
        while status == b"":  # tolerate a stray CRLF
            status = self._line()
        code = int(status.split(b" ")[1])
        headers = {}
        while (line := self._line()) != b"":
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if code == 100:
            return self.response()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while (size := int(self._line(), 16)) > 0:
                body += self._exact(size)
                self._line()
            self._line()
        else:
            body = self._exact(int(headers.get("content-length", "0")))
        return code, headers, body

    def closed(self) -> bool:
        """True once the server has closed the connection (and sent nothing more)."""
        self.sock.settimeout(5)
        try:
            return not self._fill()
        except ConnectionResetError:
            return True


def _request(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    headers = dict(headers or {})
    if body or method == "POST":
        headers.setdefault("Content-Length", str(len(body)))
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _simple_json(a: int) -> bytes:
    x = list(range(a, a + 16))
    return json.dumps(
        {
            "inputs": [
                {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": x},
                {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
            ]
        }
    ).encode()


def _simple_binary(a: int) -> tuple[bytes, int]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": [1, 16],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": 64},
                }
                for n in ("INPUT0", "INPUT1")
            ],
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
        }
    ).encode()
    data = np.arange(a, a + 16, dtype=np.int32).tobytes() + np.ones(16, np.int32).tobytes()
    return header + data, len(header)


def _output0(body: bytes) -> list[int]:
    return json.loads(body)["outputs"][0]["data"]


@pytest.fixture(scope="module")
def both(example_repo, tmp_path_factory):
    """The example repository served twice: with the fast front (default) and aiohttp alone."""
    from conftest import start_server

    logs = tmp_path_factory.mktemp("fastlogs")
    fast = start_server(example_repo, log_dir=logs)
    plain = start_server(example_repo, "--http-fast-path=false", log_dir=logs)
    yield fast, plain
    fast.stop()
    plain.stop()


def _exchange(srv, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with _connect(srv) as s:
        s.sendall(raw)
        return Reader(s).response()


CASES = [
    ("health live", _request("GET", "/v2/health/live")),
    ("health ready", _request("GET", "/v2/health/ready")),
    ("server metadata", _request("GET", "/v2")),
    ("model metadata", _request("GET", SIMPLE)),
    ("model metadata, version", _request("GET", SIMPLE + "/versions/1")),
    ("model ready", _request("GET", SIMPLE + "/ready")),
    ("model config", _request("GET", SIMPLE + "/config")),
    ("unknown model", _request("GET", "/v2/models/nope/config")),
    ("unknown version", _request("GET", SIMPLE + "/versions/7/ready")),
    ("huge version", _request("GET", SIMPLE + "/versions/99999999999999999999999/config")),
    ("infer json", _request("POST", SIMPLE + "/infer", _simple_json(3))),
    ("infer json, version", _request("POST", SIMPLE + "/versions/1/infer", _simple_json(3))),
    ("infer malformed json", _request("POST", SIMPLE + "/infer", b'{"inputs": [')),
    (
        "infer wrong shape",
        _request("POST", SIMPLE + "/infer", _simple_json(3).replace(b"16]", b"15]", 1)),
    ),
    ("infer unknown model", _request("POST", "/v2/models/nope/infer", _simple_json(3))),
    ("infer empty body", _request("POST", SIMPLE + "/infer")),
    (
        "infer binary",
        _request(
            "POST",
            SIMPLE + "/infer",
            _simple_binary(5)[0],
            {"Inference-Header-Content-Length": str(_simple_binary(5)[1])},
        ),
    ),
    (
        "bad header length",
        _request(
            "POST", SIMPLE + "/infer", _simple_json(1), {"Inference-Header-Content-Length": "-3"}
        ),
    ),
    (
        "gzip answer",
        _request("POST", SIMPLE + "/infer", _simple_json(2), {"Accept-Encoding": "gzip"}),
    ),
    (
        "unknown content encoding",
        _request("POST", SIMPLE + "/infer", _simple_json(2), {"Content-Encoding": "br"}),
    ),
    ("infer by GET", _request("GET", SIMPLE + "/infer")),
    ("trailing slash", _request("GET", SIMPLE + "/")),
    ("stats route name", _request("GET", "/v2/models/stats")),
    ("no host", b"GET /v2/health/live HTTP/1.1\r\n\r\n"),
    ("long header line", _request("GET", "/v2/health/live", headers={"X-Long": "a" * 9000})),
    ("200 headers", _request("GET", "/v2", headers={f"X-H{i}": "1" for i in range(200)})),
    (
        "null parameters, binary header",
        _request(
            "POST",
            SIMPLE + "/infer",
            _simple_json(4).replace(b'"data"', b'"parameters": null, "data"', 1),
            {"Inference-Header-Content-Length": str(len(_simple_json(4)) + 20)},
        ),
    ),
]


@pytest.mark.parametrize("raw", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_same_answer_with_and_without_the_fast_front(both, raw):
    fast, plain = both
    got = _exchange(fast, raw)
    want = _exchange(plain, raw)
    assert got[0] == want[0], (got, want)
    if b'"parameters": null' in raw:  # once a 500 from the binary-header cache
        assert got[0] == 200, got
    for header in ("content-type", "inference-header-content-length", "content-encoding"):
        assert got[1].get(header) == want[1].get(header), header
    if want[1].get("content-type") == "application/json" and b"model_stats" in want[2]:
        # statistics carry times; the shape is what must match
        assert json.loads(got[2]).keys() == json.loads(want[2]).keys()
    else:
        assert got[2] == want[2]


def test_statistics_on_the_fast_front(both):
    fast, _ = both
    code, headers, body = _exchange(fast, _request("GET", SIMPLE + "/stats"))
    assert code == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["model_stats"][0]["name"] == "simple"


def test_pipelined_requests_are_answered_in_order(both):
    fast, _ = both
    with _connect(fast) as s:
        s.sendall(
            b"".join(_request("POST", SIMPLE + "/infer", _simple_json(a)) for a in (0, 100, 200))
            + _request("GET", "/v2/health/live")
        )
        r = Reader(s)
        for a in (0, 100, 200):
            code, _, body = r.response()
            assert code == 200
            assert _output0(body) == [a + i + 1 for i in range(16)]
        assert r.response()[0] == 200


def test_a_body_in_small_pieces(both):
    fast, _ = both
    raw = _request("POST", SIMPLE + "/infer", _simple_json(7))
    with _connect(fast) as s:
        for i in range(0, len(raw), 7):
            s.sendall(raw[i : i + 7])
            time.sleep(0.001)
        code, _, body = Reader(s).response()
    assert code == 200 and _output0(body) == [8 + i for i in range(16)]


def test_connection_close_is_honoured(both):
    fast, _ = both
    with _connect(fast) as s:
        s.sendall(_request("GET", "/v2/health/ready", headers={"Connection": "close"}))
        r = Reader(s)
        code, headers, _ = r.response()
        assert code == 200 and headers["connection"].lower() == "close"
        assert r.closed()


def test_other_requests_are_handed_to_aiohttp_on_the_same_connection(both):
    """A repository call, chunked and Expect bodies and HTTP/1.0 go to aiohttp; the
    connection keeps working for inference afterwards."""
    fast, _ = both
    body = _simple_json(10)
    chunked = _request(
        "POST", SIMPLE + "/infer", b"", {"Transfer-Encoding": "chunked", "Content-Length": None}
    ).replace(b"Content-Length: None\r\n", b"")
    chunked += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    with _connect(fast) as s:
        r = Reader(s)
        s.sendall(_request("GET", "/v2/health/live"))
        assert r.response()[0] == 200  # fast front
        s.sendall(_request("POST", "/v2/repository/index", b"{}"))
        code, _, index = r.response()  # aiohttp from here on
        assert code == 200 and {"name": "simple", "version": "1", "state": "READY"} in [
            {k: m.get(k) for k in ("name", "version", "state")} for m in json.loads(index)
        ]
        s.sendall(chunked)
        code, _, out = r.response()
        assert code == 200 and _output0(out) == [11 + i for i in range(16)]
        s.sendall(_request("POST", SIMPLE + "/infer", body, {"Expect": "100-continue"}))
        code, _, out = r.response()
        assert code == 200 and _output0(out) == [11 + i for i in range(16)]
        s.sendall(_request("POST", SIMPLE + "/infer", _simple_json(20)))
        code, _, out = r.response()
        assert code == 200 and _output0(out) == [21 + i for i in range(16)]
    with _connect(fast) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
        assert Reader(s).response()[0] == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /v2/health/live HTTP/1.1\r\nBad Header\r\n\r\n",
        b"POST /v2/models/simple/infer HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST /v2/models/simple/infer HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"POST /v2/models/simple/infer HTTP/1.1\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=["request line", "header line", "two lengths", "length not a number", "length and chunked"],
)
def test_malformed_requests_get_400_and_the_server_keeps_serving(both, raw):
    fast, _ = both
    with _connect(fast) as s:
        s.sendall(raw)
        assert Reader(s).response()[0] == 400
    c = httpclient.InferenceServerClient(fast.url)
    assert c.is_server_ready()
    c.close()


def test_body_over_the_limit_is_413(example_repo, server_factory):
    srv = server_factory(example_repo, "--http-max-input-size", "4096")
    body = _simple_json(1) + b" " * 5000
    with _connect(srv) as s:
        s.sendall(_request("POST", SIMPLE + "/infer", body))
        code, _, err = Reader(s).response()
    assert code == 413 and "error" in json.loads(err)
    with _connect(srv) as s:
        s.sendall(_request("POST", SIMPLE + "/infer", _simple_json(1)))
        assert Reader(s).response()[0] == 200


def test_large_binary_body(both):
    """A 4 MiB BYTES element through the front: from tritonclient, and from a raw socket
    that sends it in 64 KiB pieces."""
    fast, _ = both
    blob = base64.b64encode(np.random.default_rng(0).bytes(3 << 20))  # 4 MiB of UTF-8
    inp = httpclient.InferInput("INPUT0", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[blob]], dtype=np.object_), binary_data=True)
    out = httpclient.InferenceServerClient(fast.url, network_timeout=60).infer(
        "simple_identity", [inp]
    )
    assert out.as_numpy("OUTPUT0")[0, 0] == blob
    data = struct.pack("<I", len(blob)) + blob
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [1, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
        }
    ).encode()
    raw = _request(
        "POST",
        "/v2/models/simple_identity/infer",
        header + data,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    with _connect(fast) as s:
        for i in range(0, len(raw), 1 << 16):
            s.sendall(raw[i : i + (1 << 16)])
        code, headers, body = Reader(s).response()
    assert code == 200
    start = int(headers["inference-header-content-length"])
    assert body[start + 4 :] == blob


def _sleepy_server(server_factory, example_repo, tmp_path):
    """A server with ``sleepy`` (the test plugin that sleeps INPUT0 ms) beside the examples."""
    repo = tmp_path / "sleep"
    (repo / "sleepy" / "1").mkdir(parents=True)
    (repo / "sleepy" / "config.pbtxt").write_text(
        'backend: "test_sleep"\nmax_batch_size: 4\n'
        'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
        'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
    )
    return server_factory([repo, example_repo], "--plugin", "naiad_test_backends")


def _sleep_body(ms: float) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [ms]}]}
    ).encode()


def test_a_client_that_leaves_mid_request_loses_nothing(server_factory, example_repo, tmp_path):
    """The client closes while its request runs; the model finishes, the server keeps serving."""
    srv = _sleepy_server(server_factory, example_repo, tmp_path)
    body = _sleep_body(300)
    s = _connect(srv)
    s.sendall(_request("POST", "/v2/models/sleepy/infer", body))
    time.sleep(0.1)
    s.close()
    with _connect(srv) as s2:
        s2.sendall(_request("POST", "/v2/models/sleepy/infer", _sleep_body(1)))
        code, _, out = Reader(s2).response()
    assert code == 200 and _output0(out) == [1.0]
    c = httpclient.InferenceServerClient(srv.url)
    stats = c.get_inference_statistics("sleepy")["model_stats"][0]["inference_stats"]
    assert stats["success"]["count"] == 2
    c.close()


def test_a_repeated_binary_header_is_parsed_once_and_stays_correct(both):
    """The same JSON header with new tensor bytes (what a client in a loop sends) is served
    from the model's parsed-header cache: answers follow the bytes, and a body that no longer
    fits the header, or a header that failed validation, fail as on the first call."""
    fast, plain = both
    for srv in (fast, plain):
        with _connect(srv) as s:
            r = Reader(s)
            for a in (0, 50, 7, 1000):
                body, length = _simple_binary(a)
                s.sendall(
                    _request(
                        "POST",
                        SIMPLE + "/infer",
                        body,
                        {"Inference-Header-Content-Length": str(length)},
                    )
                )
                code, headers, out = r.response()
                assert code == 200
                start = int(headers["inference-header-content-length"])
                got = np.frombuffer(out[start:], dtype=np.int32)
                assert got.tolist() == [a + i + 1 for i in range(16)]
            body, length = _simple_binary(3)
            short = _request(
                "POST",
                SIMPLE + "/infer",
                body[:-4],
                {"Inference-Header-Content-Length": str(length)},
            )
            s.sendall(short)
            code, _, err = r.response()
            assert code == 400 and "INPUT1" in json.loads(err)["error"]
            # a header whose shape the model refuses: refused every time
            bad = body[:length].replace(b"[1, 16]", b"[2, 8]")
            for _ in range(2):
                s.sendall(
                    _request(
                        "POST",
                        SIMPLE + "/infer",
                        bad + body[length:],
                        {"Inference-Header-Content-Length": str(len(bad))},
                    )
                )
                code, _, err = r.response()
                assert code == 400 and "unexpected shape" in json.loads(err)["error"]


def test_nothing_after_a_connection_close_request_is_run(both):
    """Requests pipelined behind one that says "Connection: close" are neither answered nor
    executed."""
    fast, _ = both
    c = httpclient.InferenceServerClient(fast.url)
    before = c.get_inference_statistics("simple")["model_stats"][0]["inference_count"]
    with _connect(fast) as s:
        s.sendall(
            _request("GET", "/v2/health/live", headers={"Connection": "close"})
            + _request("POST", SIMPLE + "/infer", _simple_json(1))
        )
        r = Reader(s)
        assert r.response()[0] == 200
        assert r.closed()
    after = c.get_inference_statistics("simple")["model_stats"][0]["inference_count"]
    assert after == before
    c.close()


def test_a_half_closed_client_still_gets_its_answer(server_factory, example_repo, tmp_path):
    srv = _sleepy_server(server_factory, example_repo, tmp_path)
    body = _sleep_body(200)
    with _connect(srv) as s:
        s.sendall(_request("POST", "/v2/models/sleepy/infer", body))
        time.sleep(0.05)  # the request is running
        s.shutdown(socket.SHUT_WR)
        r = Reader(s)
        code, _, out = r.response()
        assert code == 200 and _output0(out) == [200.0]
        assert r.closed()


def test_a_long_pipeline_then_half_close_is_answered_in_full(both):
    """More pipelined requests than the front answers in one turn (32), then the client's
    EOF: every request still gets its answer, in order, before the server closes."""
    fast, _ = both
    gets = [_request("GET", SIMPLE + "/versions/1/ready")] * 70
    with _connect(fast) as s:
        s.sendall(
            b"".join(gets) + _request("POST", SIMPLE + "/infer", _simple_json(9)) + b"".join(gets)
        )
        s.shutdown(socket.SHUT_WR)
        r = Reader(s)
        for _ in gets:
            assert r.response()[0] == 200
        code, _, body = r.response()
        assert code == 200 and _output0(body)[0] == 10
        for _ in gets:
            assert r.response()[0] == 200
        assert r.closed()
