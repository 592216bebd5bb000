"""ModelStreamInfer through tritonclient.grpc's streaming API (sync and asyncio): sequences over
one stream, ordered replies, in-band errors and the ``triton_grpc_error`` mode, and SIGTERM with
streams open."""

from __future__ import annotations

import queue
import signal
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from conftest import sleep_config
from tritonclient.utils import InferenceServerException

VALUES = [11, 7, 5, 3, 2, 0, 1]  # simple_grpc_sequence_stream_infer_client.py

SLEEP_CONFIG = sleep_config(2)
DECOUPLED_CONFIG = SLEEP_CONFIG + "model_transaction_policy { decoupled: true }\n"
FAIL_CONFIG = """backend: "test_fail"
max_batch_size: 4
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]
"""


class Replies:
    """The stream callback: every (result, error) in arrival order."""

    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue()

    def __call__(self, result, error) -> None:
        self.q.put((result, error))

    def take(self, n: int) -> list:
        return [self.q.get(timeout=60) for _ in range(n)]


def _int_input(value: int):
    inp = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    inp.set_data_from_numpy(np.full((1, 1), value, dtype=np.int32))
    return [inp]


def _fp_input(value: float):
    inp = grpcclient.InferInput("INPUT0", [1, 1], "FP32")
    inp.set_data_from_numpy(np.array([[value]], dtype=np.float32))
    return [inp]


@pytest.fixture
def backend_server(server_factory, tmp_path):
    repo = tmp_path / "stream_repo"
    models = (("sleepy", SLEEP_CONFIG), ("failing", FAIL_CONFIG), ("decoupled", DECOUPLED_CONFIG))
    for name, config in models:
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(config)
    return server_factory(repo, "--plugin", "naiad_test_backends")


def test_three_sequences_interleaved_on_one_stream(gc):
    """simple_grpc_sequence_stream_infer_client.py: ids 1000, 1001 and a string id, request ids
    ``<seq>_<n>`` echoed, replies in request order."""
    replies = Replies()
    gc.start_stream(callback=replies)
    seqs = [(1000, 0, 1), (1001, 100, -1), ("seq-str", 20, -1)]
    count = len(VALUES) + 1
    for n in range(count):
        for sid, first, sign in seqs:
            value = first if n == 0 else sign * VALUES[n - 1]
            gc.async_stream_infer(
                "simple_sequence",
                _int_input(value),
                request_id=f"{sid}_{n}",
                sequence_id=sid,
                sequence_start=n == 0,
                sequence_end=n == count - 1,
            )
    got = replies.take(count * len(seqs))
    gc.stop_stream()
    assert all(error is None for _, error in got), [e for _, e in got if e]
    ids = [r.get_response().id for r, _ in got]
    assert ids == [f"{sid}_{n}" for n in range(count) for sid, _, _ in seqs]
    values: dict = {}
    for result, _ in got:
        sid = result.get_response().id.rsplit("_", 1)[0]
        values.setdefault(sid, []).append(int(result.as_numpy("OUTPUT")[0, 0]))
        assert result.get_response().parameters["triton_final_response"].bool_param is True
    assert values["1000"] == [1] + VALUES
    assert values["1001"] == [101] + [-v for v in VALUES]
    assert values["seq-str"] == [21] + [-v for v in VALUES]


def test_stream_of_mixed_models_and_empty_final_flag(gc):
    replies = Replies()
    gc.start_stream(callback=replies)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [grpcclient.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in (0, 1)]
    for inp in inputs:
        inp.set_data_from_numpy(a)
    x = np.ones((1, 16), dtype=np.float32)
    mlp_in = grpcclient.InferInput("input", [1, 16], "FP32")
    mlp_in.set_data_from_numpy(x)
    for i in range(6):
        if i % 2:
            gc.async_stream_infer("mlp", [mlp_in], request_id=str(i))
        else:
            gc.async_stream_infer(
                "simple", inputs, request_id=str(i), enable_empty_final_response=True
            )
    got = replies.take(6)
    gc.stop_stream()
    assert [r.get_response().id for r, _ in got] == [str(i) for i in range(6)]
    np.testing.assert_array_equal(got[0][0].as_numpy("OUTPUT0"), a + a)
    assert got[1][0].as_numpy("output").shape == (1, 16)
    assert replies.q.empty()  # one reply per request: no empty finals for a non-decoupled model


def test_errors_in_band_keep_the_stream_open(gc):
    replies = Replies()
    gc.start_stream(callback=replies)
    gc.async_stream_infer("nope", _int_input(1), request_id="a")
    gc.async_stream_infer("simple_sequence", _int_input(1), request_id="b", sequence_id=77)
    gc.async_stream_infer(
        "simple_sequence",
        _int_input(5),
        request_id="c",
        sequence_id=78,
        sequence_start=True,
        sequence_end=True,
    )
    (r0, e0), (r1, e1), (r2, e2) = replies.take(3)
    gc.stop_stream()
    assert isinstance(e0, InferenceServerException) and r0 is None
    assert "Request for unknown model: 'nope' is not found" in e0.message()
    assert isinstance(e1, InferenceServerException)
    assert "START" in e1.message()
    assert e2 is None and int(r2.as_numpy("OUTPUT")[0, 0]) == 6


def test_triton_grpc_error_header_ends_the_stream(backend_server):
    c = grpcclient.InferenceServerClient(backend_server.grpc_url)
    replies = Replies()
    c.start_stream(callback=replies, headers={"triton_grpc_error": "true"})
    c.async_stream_infer("failing", _fp_input(1.0), request_id="fine")
    ((r0, e0),) = replies.take(1)
    assert e0 is None and r0.as_numpy("OUTPUT0")[0, 0] == 1.0
    c.async_stream_infer("failing", _fp_input(-1.0), request_id="bad")
    ((r1, e1),) = replies.take(1)
    assert r1 is None and e1.status() == "StatusCode.INTERNAL"
    assert "negative input" in e1.message()
    with pytest.raises(InferenceServerException, match="no longer in valid state"):
        c.async_stream_infer("failing", _fp_input(1.0))
    c.stop_stream()
    # without the header the same failure is an in-band reply and the stream goes on
    c.start_stream(callback=replies)
    c.async_stream_infer("failing", _fp_input(-1.0), request_id="bad")
    c.async_stream_infer("failing", _fp_input(2.0), request_id="after")
    (_, e2), (r3, e3) = replies.take(2)
    c.stop_stream()
    assert "negative input" in e2.message() and e2.status() is None
    assert e3 is None and r3.as_numpy("OUTPUT0")[0, 0] == 2.0
    assert c.is_server_live()
    c.close()


async def test_aio_stream(server):
    """simple_grpc_aio_sequence_stream_infer_client.py: the asyncio client's stream_infer."""

    async def requests():
        for n, value in enumerate([0] + VALUES):
            yield {
                "model_name": "simple_dyna_sequence",
                "inputs": _int_input(value),
                "request_id": str(n),
                "sequence_id": 1001,
                "sequence_start": n == 0,
                "sequence_end": n == len(VALUES),
            }

    async with aioclient.InferenceServerClient(server.grpc_url) as c:
        out = []
        async for result, error in c.stream_infer(requests()):
            assert error is None
            out.append(int(result.as_numpy("OUTPUT")[0, 0]))
    assert out == [1] + VALUES[:-1] + [1 + 1001]


def test_sigterm_with_open_streams(backend_server):
    """In-flight stream requests finish and are answered; requests read after SIGTERM get
    Triton's in-band refusal; the client closes its stream and the server exits 0."""
    c = grpcclient.InferenceServerClient(backend_server.grpc_url)
    idle = grpcclient.InferenceServerClient(backend_server.grpc_url)
    replies, idle_replies = Replies(), Replies()
    c.start_stream(callback=replies)
    idle.start_stream(callback=idle_replies)
    c.async_stream_infer("sleepy", _fp_input(1500.0), request_id="slow")
    time.sleep(0.5)  # the request is executing
    backend_server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    idle.async_stream_infer("sleepy", _fp_input(1.0), request_id="late")
    ((late, late_error),) = idle_replies.take(1)
    assert late is None
    assert late_error.message() == (
        "GRPC server is shutting down and has stopped accepting new requests."
    )
    ((slow, slow_error),) = replies.take(1)
    assert slow_error is None and slow.as_numpy("OUTPUT0")[0, 0] == 1500.0
    done = threading.Thread(target=lambda: (c.stop_stream(), idle.stop_stream()))
    done.start()
    done.join(30)
    assert backend_server.process.wait(30) == 0
    c.close()
    idle.close()


def test_decoupled_model(backend_server):
    """ModelInfer refuses a decoupled model as Triton does; the stream serves it, each response
    marked with triton_final_response."""
    c = grpcclient.InferenceServerClient(backend_server.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        c.infer("decoupled", _fp_input(1.0))
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert info.value.message() == (
        "ModelInfer RPC doesn't support models with decoupled transaction policy"
    )
    assert c.get_model_config("decoupled").config.model_transaction_policy.decoupled
    replies = Replies()
    c.start_stream(callback=replies)
    c.async_stream_infer(
        "decoupled", _fp_input(3.0), request_id="d", enable_empty_final_response=True
    )
    ((result, error),) = replies.take(1)
    c.stop_stream()
    assert error is None and result.as_numpy("OUTPUT0")[0, 0] == 3.0
    assert result.get_response().parameters["triton_final_response"].bool_param is True
    c.close()


def test_replies_keep_request_order_errors_included(backend_server):
    c = grpcclient.InferenceServerClient(backend_server.grpc_url)
    replies = Replies()
    c.start_stream(callback=replies)
    c.async_stream_infer("sleepy", _fp_input(300.0), request_id="slow")
    c.async_stream_infer("nope", _fp_input(1.0), request_id="unknown")
    c.async_stream_infer("sleepy", _fp_input(1.0), request_id="quick")
    (r0, e0), (r1, e1), (r2, e2) = replies.take(3)
    c.stop_stream()
    assert e0 is None and r0.get_response().id == "slow"
    assert r1 is None and "Request for unknown model: 'nope'" in e1.message()
    assert e2 is None and r2.get_response().id == "quick"
    c.close()
