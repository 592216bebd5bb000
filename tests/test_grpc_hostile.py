"""Hostile clients on the lean gRPC front (naiad.grpc.limits): what they leave behind is
released and bounded (descriptors and memory from /proc, as bounds), stalled connections and
streams are closed by the limits of ``--http-header-timeout`` / ``--http-body-timeout``, a
client streaming faster than the model is held back by flow control, and the real client is
served meanwhile."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from naiad.grpc.limits import Budget
from procfs import fds, reset_peak, settles, status_mib
from test_grpc_front import DATA, END_HEADERS, H2, HEADERS, PING, SETTINGS, frame, message
from tritonclient.grpc import service_pb2 as tpb

WINDOW_UPDATE, RST_STREAM, GOAWAY = 8, 3, 7


@pytest.fixture(scope="module")
def strict(example_repo, sleep_repo, tmp_path_factory):
    """The lean front with 1 s limits for a handshake / first call and for body progress."""
    from conftest import start_server

    srv = start_server(
        [example_repo, sleep_repo],
        "--http-header-timeout=1",
        "--http-body-timeout=1",
        "--plugin",
        "naiad_test_backends",
        log_dir=tmp_path_factory.mktemp("grpc_hostile"),
    )
    yield srv
    srv.stop()


def _serving(srv) -> None:
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [grpcclient.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in (0, 1)]
    for inp in inputs:
        inp.set_data_from_numpy(a)
    np.testing.assert_array_equal(c.infer("simple", inputs).as_numpy("OUTPUT0"), a + a)
    c.close()


def _closes(h: H2) -> bool:
    """Whether the server closes ``h`` (GOAWAY first or not), reading what it sends."""
    h.sock.settimeout(20)
    try:
        while (f := h.frame()) is not None:
            if f[0] == PING and not f[1] & 1:
                h.send(frame(PING, 1, 0, f[3]))
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_200_clients_leaving_or_stalling_mid_message(strict):
    """200 clients send HEADERS and half of a 2 MiB ModelInfer message: half go away, half stall.
    Every server descriptor is released (the stalled ones by the body-progress limit) and the
    memory they held stays bounded by what they sent."""
    pid = strict.process.pid
    _serving(strict)
    baseline = fds(pid)
    rss = status_mib(pid, "VmRSS")
    reset_peak(pid)  # VmHWM from now on
    size, sent = 2 << 20, 1 << 20
    prefix = b"\x00" + size.to_bytes(4, "big")
    stalled = []
    body = prefix + b"x" * (sent - 5)
    for i in range(200):
        h = H2(strict.grpc_port)
        try:
            h.send(frame(HEADERS, END_HEADERS, 1, h.block("ModelInfer")))
            for pos in range(0, sent, 1 << 16):
                h.send(frame(DATA, 0, 1, body[pos : pos + (1 << 16)]))
        except (BrokenPipeError, ConnectionResetError):
            pass  # a client this slow may be closed by the 1 s body limit already
        if i % 2:
            stalled.append(h)
        else:
            h.close()
    assert settles(pid, baseline + 2, within=15.0) <= baseline + 2
    peak = status_mib(pid, "VmHWM") - rss
    assert peak < 200 * sent / 2**20 * 1.5 + 64, peak
    for h in stalled:
        h.close()
    _serving(strict)


def test_a_connection_that_never_calls_is_closed(strict):
    """Nothing at all, a preface and SETTINGS and then nothing: both closed by the head limit."""
    pid = strict.process.pid
    baseline = fds(pid)
    silent = socket.create_connection(("127.0.0.1", strict.grpc_port), timeout=20)
    while silent.recv(1024):  # the server's SETTINGS, then EOF
        pass
    silent.close()
    h = H2(strict.grpc_port)
    assert _closes(h)
    h.close()
    assert settles(pid, baseline, within=15.0) <= baseline
    _serving(strict)


def test_a_stream_stalled_mid_message_is_reset(strict):
    """A ModelStreamInfer stream: one whole message is answered, half of the next stalls the
    stream: RST_STREAM CANCEL, then GOAWAY and the connection closes."""
    h = H2(strict.grpc_port)
    h.send(frame(HEADERS, END_HEADERS, 1, h.block("ModelStreamInfer")))
    request = tpb.ModelInferRequest(model_name="simple_identity", id="one")
    request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.append(b"\x02\x00\x00\x00hi")
    h.send(frame(DATA, 0, 1, message(request)))
    whole = message(request)
    h.send(frame(DATA, 0, 1, whole[: len(whole) // 2]))
    headers, data = h.answer(1)
    assert headers == {"rst": "8"}  # CANCEL
    reply = tpb.ModelStreamInferResponse.FromString(data[5:])
    assert reply.error_message == "" and reply.infer_response.id == "one"
    assert _closes(h)
    h.close()
    _serving(strict)


def test_a_client_streaming_faster_than_the_model_is_held_back(strict):
    """400 requests of 256 KiB to a model that takes 1 s each (2 instances): the windows the
    server grants stay within what it keeps in flight per stream (128 requests), one stream
    window (16 MiB) and what it answered, far below the 100 MiB the client wants to send."""
    h = H2(strict.grpc_port)
    h.send(frame(HEADERS, END_HEADERS, 1, h.block("ModelStreamInfer")))
    request = tpb.ModelInferRequest(model_name="sleepy")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[1000.0]], dtype=np.float32).tobytes())
    request.parameters["pad"].string_param = "x" * (256 << 10)
    one = message(request)
    stream_window = conn_window = 65535  # the client's own settings are the defaults
    stream_window = 16 << 20  # the server's initial stream window (its SETTINGS)
    sent = answered = 0
    h.sock.settimeout(0.5)
    until = time.monotonic() + 5  # how long the client tries (the test's length, not a bound)
    while sent < 400 and time.monotonic() < until:
        while sent < 400 and min(stream_window, conn_window) >= len(one):
            h.send(frame(DATA, 0, 1, one))
            stream_window -= len(one)
            conn_window -= len(one)
            sent += 1
        assert sent <= 128 + answered + (16 << 20) // len(one) + 2, (sent, answered)
        try:
            f = h.frame()
        except TimeoutError:
            continue
        assert f is not None
        kind, flags, sid, payload = f
        if kind == WINDOW_UPDATE:
            increment = int.from_bytes(payload, "big")
            if sid:
                stream_window += increment
            else:
                conn_window += increment
        elif kind == SETTINGS and not flags & 1:
            h.send(frame(SETTINGS, 1, 0))
        elif kind == DATA and sid == 1:
            answered += 1  # (a reply fits in one frame)
        elif kind == PING and not flags & 1:
            h.send(frame(PING, 1, 0, payload))
        assert kind not in (RST_STREAM, GOAWAY), f
    assert sent < 400, (sent, answered)
    h.close()
    _serving(strict)


def test_keepalive_pings_without_data_are_limited(example_repo, server_factory):
    """``--grpc-http2-max-pings-without-data=2``: the server sends two keepalive pings, then
    none until it sends headers or data; then two more."""
    srv = server_factory(
        example_repo,
        "--grpc-keepalive-time=100",
        "--grpc-keepalive-permit-without-calls=true",
        "--grpc-http2-max-pings-without-data=2",
    )
    h = H2(srv.grpc_port)
    h.sock.settimeout(1.5)

    def pings() -> int:
        n = 0
        while True:
            try:
                f = h.frame()
            except TimeoutError:
                return n
            assert f is not None
            if f[0] == PING and not f[1] & 1:
                n += 1
                h.send(frame(PING, 1, 0, f[3]))
            elif f[0] == SETTINGS and not f[1] & 1:
                h.send(frame(SETTINGS, 1, 0))

    assert pings() == 2
    h.send(h.call(1, "ServerLive", tpb.ServerLiveRequest()))
    assert pings() == 2  # the answer was data: two more, then quiet
    h.close()


class _Holder:
    """A connection's side of the budget: what it reserved, waits for, was granted."""

    def __init__(self) -> None:
        self.reserved = self.wanted = self.grants = 0
        self.open = True

    def granted(self) -> None:
        self.grants += 1

    def is_open(self) -> bool:
        return self.open


def test_the_message_budget_is_shared_and_bounded():
    budget = Budget(100)
    a, b, c = _Holder(), _Holder(), _Holder()
    assert budget.reserve(a, 60)
    assert not budget.reserve(b, 60)  # does not fit: waits
    assert budget.reserve(a, 60)  # what a holds cannot keep a waiting (it must finish)
    assert not budget.reserve(c, 10)
    assert budget.buffered == 120 and b.wanted == 60
    budget.release(a, 60)
    assert b.grants == 0  # 60 + 60 > 100
    budget.forget(a)
    assert budget.buffered == 70 and b.grants == 1 and c.grants == 1
    c.open = False
    budget.forget(c)
    budget.release(b, 60)
    assert budget.buffered == 0 and not budget.waiting
    # a reservation given up while it still waits is dropped, not released twice
    assert budget.reserve(a, 90) and not budget.reserve(b, 20)
    budget.release(b, 20)
    assert budget.buffered == 90 and not budget.waiting and b.wanted == 0 and b.grants == 2
