"""Triton python-backend models (``class TritonPythonModel``) served unchanged, each test in both
instance modes (``instance_isolation`` ``thread``: in the server process; ``process``: each
instance in a process of its own, the default): life cycle, args, auto-complete, errors,
batching, decoupled streaming over ``generate_stream``, BLS, custom metrics, logging,
cancellation."""

from __future__ import annotations

import http.client
import json
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonpy_models as tm
from conftest import make_models
from tritonclient.utils import InferenceServerException


def isolation(mode: str) -> str:
    return f'parameters {{ key: "instance_isolation" value: {{ string_value: "{mode}" }} }}\n'


ENSEMBLE = """
name: "simple_ens"
platform: "ensemble"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
ensemble_scheduling { step [ {
  model_name: "simple" model_version: -1
  input_map { key: "INPUT0" value: "INPUT0" } input_map { key: "INPUT1" value: "INPUT1" }
  output_map { key: "OUTPUT0" value: "OUTPUT0" } output_map { key: "OUTPUT1" value: "OUTPUT1" }
} ] }
"""


def write_repo(repo, mode: str):
    isolation_line = isolation(mode)
    tm.write(repo, "add_sub", tm.ADD_SUB, tm.add_sub_config("add_sub"), isolation_line)
    tm.write(
        repo, "async_add_sub", tm.ASYNC_ADD_SUB, tm.add_sub_config("async_add_sub"), isolation_line
    )
    tm.write(repo, "init_args", tm.INIT_ARGS, tm.INIT_ARGS_CONFIG, isolation_line)
    tm.write(repo, "auto_complete", tm.AUTO_COMPLETE, None)
    tm.write(repo, "error_code", tm.ERROR_CODE, tm.ERROR_CODE_CONFIG, isolation_line)
    tm.write(repo, "batch_count", tm.BATCH_COUNT, tm.BATCH_COUNT_CONFIG, isolation_line)
    tm.write(repo, "sender_answers", tm.SENDER_ANSWERS, tm.SENDER_ANSWERS_CONFIG, isolation_line)
    tm.write(repo, "square_int32", tm.SQUARE, tm.SQUARE_CONFIG, isolation_line)
    tm.write(repo, "repeat_int32", tm.REPEAT, tm.REPEAT_CONFIG, isolation_line)
    tm.write(
        repo,
        "custom_metrics",
        tm.CUSTOM_METRICS,
        tm.add_sub_config("custom_metrics"),
        isolation_line,
    )
    tm.write(repo, "bls_sync", tm.BLS_SYNC, tm.bls_config("bls_sync"), isolation_line)
    tm.write(repo, "bls_async", tm.BLS_ASYNC, tm.bls_config("bls_async"), isolation_line)
    tm.write(repo, "bls_decoupled", tm.BLS_DECOUPLED, tm.BLS_DECOUPLED_CONFIG, isolation_line)
    tm.write(repo, "bls_sequence", tm.BLS_SEQUENCE, tm.BLS_SEQUENCE_CONFIG, isolation_line)
    tm.write(
        repo, "decoupled_errors", tm.DECOUPLED_ERRORS, tm.DECOUPLED_ERRORS_CONFIG, isolation_line
    )
    make_models.write_simple(repo)
    make_models.write_simple_dyna_sequence(repo)
    (repo / "simple_ens" / "1").mkdir(parents=True)
    (repo / "simple_ens" / "config.pbtxt").write_text(ENSEMBLE)


@pytest.fixture(scope="module", params=["thread", "process"])
def pyserver(request, tmp_path_factory):
    from conftest import start_server

    repo = tmp_path_factory.mktemp(f"tritonpy_{request.param}")
    write_repo(repo, request.param)
    srv = start_server(repo, log_dir=tmp_path_factory.mktemp("logs"))
    yield srv
    srv.stop()


@pytest.fixture
def pyclient(pyserver):
    c = httpclient.InferenceServerClient(pyserver.url, concurrency=8)
    yield c
    c.close()


def add_sub_inputs(a, b, dtype="FP32"):
    inputs = [
        httpclient.InferInput("INPUT0", list(a.shape), dtype),
        httpclient.InferInput("INPUT1", list(b.shape), dtype),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def post(server, path, body, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    return conn, response


def sse_events(server, model, body):
    conn, response = post(server, f"/v2/models/{model}/generate_stream", body)
    try:
        assert response.status == 200, response.read()
        assert response.getheader("Content-Type").startswith("text/event-stream")
        text = response.read().decode()
    finally:
        conn.close()
    return [json.loads(chunk[len("data: ") :]) for chunk in text.split("\n\n") if chunk]


# ---- life cycle ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["add_sub", "async_add_sub"])
def test_add_sub(pyclient, model):
    a = np.array([1, 2, 3, 4], np.float32)
    b = np.array([0.5, 0.5, 1, 1], np.float32)
    result = pyclient.infer(model, add_sub_inputs(a, b))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    only = pyclient.infer(
        model, add_sub_inputs(a, b), outputs=[httpclient.InferRequestedOutput("OUTPUT1")]
    )
    assert only.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(only.as_numpy("OUTPUT1"), a - b)


def test_initialize_args_are_tritons(pyserver, pyclient):
    inp = httpclient.InferInput("IN", [1], "FP32")
    inp.set_data_from_numpy(np.ones(1, np.float32))
    args = json.loads(pyclient.infer("init_args", [inp]).as_numpy("ARGS")[0])
    assert set(args) == {
        "model_config",
        "model_instance_kind",
        "model_instance_name",
        "model_instance_device_id",
        "model_repository",
        "model_version",
        "model_name",
    }
    assert all(isinstance(v, str) for v in args.values())
    assert args["model_instance_kind"] == "CPU"
    assert args["model_instance_name"] == "init_args_0_0"
    assert args["model_instance_device_id"] == "0"
    assert args["model_version"] == "1" and args["model_name"] == "init_args"
    assert args["model_repository"].endswith("/init_args")
    config = json.loads(args["model_config"])
    assert config == pyclient.get_model_config("init_args")
    assert config["parameters"]["custom_key"] == {"string_value": "custom_value"}


def test_auto_complete_without_config_pbtxt(pyclient):
    config = pyclient.get_model_config("auto_complete")
    assert config["max_batch_size"] == 4
    assert "dynamic_batching" in config
    assert [i["name"] for i in config["input"]] == ["INPUT0", "INPUT1"]
    assert [o["data_type"] for o in config["output"]] == ["TYPE_FP32", "TYPE_FP32"]
    a = np.ones((2, 4), np.float32)
    result = pyclient.infer("auto_complete", add_sub_inputs(a, a))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)


# ---- errors ---------------------------------------------------------------------------------------


def code_input(code: int):
    inp = httpclient.InferInput("CODE", [1, 1], "INT32")
    inp.set_data_from_numpy(np.array([[code]], np.int32))
    return [inp]


@pytest.mark.parametrize(
    "code,status", [(0, 400), (1, 500), (2, 404), (3, 400), (4, 503), (5, 501), (6, 400), (7, 400)]
)
def test_error_response_codes(pyclient, code, status):
    with pytest.raises(InferenceServerException) as info:
        pyclient.infer("error_code", code_input(code))
    assert info.value.status() == str(status)
    assert info.value.message() == f"error code {code}"


def test_raised_exception_fails_the_batch_and_the_instance_keeps_serving(pyclient):
    with pytest.raises(InferenceServerException) as info:
        pyclient.infer("error_code", code_input(-1))
    assert info.value.status() == "500"
    assert info.value.message().startswith(
        "Failed to process the request(s) for model 'error_code_0_0', message: "
    )
    assert "the model raised on purpose" in info.value.message()
    assert pyclient.infer("error_code", code_input(99)).as_numpy("OUT").tolist() == [[99]]


def test_an_error_response_fails_only_its_request_of_a_batch(pyclient):
    # the batcher waits 300 ms for company: both requests run in one execute
    good = pyclient.async_infer("error_code", code_input(99))
    bad = pyclient.async_infer("error_code", code_input(3))
    assert good.get_result().as_numpy("OUT").tolist() == [[99]]
    with pytest.raises(InferenceServerException, match="error code 3"):
        bad.get_result()


def test_dynamic_batcher_hands_execute_several_requests(pyclient):
    inp = httpclient.InferInput("IN", [1, 1], "FP32")
    inp.set_data_from_numpy(np.ones((1, 1), np.float32))
    pending = [pyclient.async_infer("batch_count", [inp]) for _ in range(4)]
    counts = [int(p.get_result().as_numpy("COUNT")[0, 0]) for p in pending]
    assert max(counts) > 1  # requests arrive as one list, not merged


def test_a_batch_answered_by_return_value_by_sender_and_not_at_all(pyclient):
    def mode_input(mode: int):
        inp = httpclient.InferInput("MODE", [1, 1], "INT32")
        inp.set_data_from_numpy(np.array([[mode]], np.int32))
        return [inp]

    # the batcher waits 300 ms for company: the three requests run in one execute
    pending = [pyclient.async_infer("sender_answers", mode_input(m)) for m in (0, 1, 2)]
    assert pending[0].get_result().as_numpy("OUT").tolist() == [[1]]
    assert pending[1].get_result().as_numpy("OUT").tolist() == [[11]]
    with pytest.raises(InferenceServerException) as info:
        pending[2].get_result()
    assert info.value.status() == "500"
    assert info.value.message() == (
        "Failed to process the request(s) for model 'sender_answers_0_0', message: "
        "execute returned None for a request it did not answer"
    )
    # the same again, one request per execute
    assert pyclient.infer("sender_answers", mode_input(1)).as_numpy("OUT").tolist() == [[11]]
    assert pyclient.infer("sender_answers", mode_input(0)).as_numpy("OUT").tolist() == [[1]]
    # threads of the model asking for the sender at once get the same one
    assert pyclient.infer("sender_answers", mode_input(3)).as_numpy("OUT").tolist() == [[31]]


# ---- decoupled ------------------------------------------------------------------------------------


def test_decoupled_square_over_generate_stream(pyserver):
    events = sse_events(pyserver, "square_int32", {"IN": 3})
    assert events == [{"model_name": "square_int32", "model_version": "1", "OUT": 3}] * 3
    assert sse_events(pyserver, "square_int32", {"IN": 0}) == []  # only the final flag


def test_decoupled_repeat_async_execute(pyserver):
    events = sse_events(pyserver, "repeat_int32", {"IN": [4, 5, 6], "DELAY": 5})
    assert [(e["OUT"], e["IDX"]) for e in events] == [(4, 0), (5, 1), (6, 2)]


def test_decoupled_model_over_infer_is_refused(pyserver, pyclient):
    inp = httpclient.InferInput("IN", [1], "INT32")
    inp.set_data_from_numpy(np.array([2], np.int32))
    with pytest.raises(InferenceServerException) as info:
        pyclient.infer("square_int32", [inp])
    assert info.value.status() == "501"
    assert info.value.message() == (
        "HTTP end point doesn't support models with decoupled transaction policy"
    )
    assert sse_events(pyserver, "square_int32", {"IN": 1})[0]["OUT"] == 1


def test_decoupled_errors(pyserver):
    conn, response = post(pyserver, "/v2/models/decoupled_errors/generate_stream", {"MODE": 0})
    assert response.status == 500
    message = json.loads(response.read())["error"]
    conn.close()
    assert message.startswith(
        "Failed to process the request(s) for model 'decoupled_errors_0', message: "
    )
    assert "decoupled failure" in message
    conn, response = post(pyserver, "/v2/models/decoupled_errors/generate_stream", {"MODE": 1})
    assert response.status == 500
    assert json.loads(response.read())["error"] == (
        "Python model 'decoupled_errors_0' is using the decoupled mode and the execute "
        "function must return None."
    )
    conn.close()
    conn, response = post(pyserver, "/v2/models/decoupled_errors/generate_stream", {"MODE": 2})
    assert response.status == 200
    text = response.read().decode()
    conn.close()
    events = [json.loads(c[len("data: ") :]) for c in text.split("\n\n") if c]
    assert events[0]["OUT"] == 7
    assert events[1] == {"error": "late failure"}


def test_generate_on_a_plain_model(pyserver):
    conn, response = post(
        pyserver, "/v2/models/add_sub/generate", {"INPUT0": [1, 2, 3, 4], "INPUT1": [1, 1, 1, 1]}
    )
    body = json.loads(response.read())
    conn.close()
    assert response.status == 200
    assert body == {
        "model_name": "add_sub",
        "model_version": "1",
        "OUTPUT0": [2.0, 3.0, 4.0, 5.0],
        "OUTPUT1": [0.0, 1.0, 2.0, 3.0],
    }
    conn, response = post(pyserver, "/v2/models/add_sub/generate", {"NOPE": 1})
    assert response.status == 400
    assert "unexpected inference input 'NOPE'" in json.loads(response.read())["error"]
    conn.close()


def test_cancelled_stream_is_seen_by_the_model(pyserver):
    conn, response = post(
        pyserver, "/v2/models/repeat_int32/generate_stream", {"IN": list(range(100)), "DELAY": 50}
    )
    assert response.status == 200
    assert response.readline().startswith(b"data: ")
    conn.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if metric_value(pyserver, 'repeat_cancelled{model="repeat_int32"}') >= 1:
            break
        time.sleep(0.1)
    assert metric_value(pyserver, 'repeat_cancelled{model="repeat_int32"}') >= 1


# ---- BLS ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["bls_sync", "bls_async"])
@pytest.mark.parametrize("target", ["simple", "simple_ens"])
def test_bls_calls_onnx_model_and_ensemble(pyclient, model, target):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 2, np.int32)
    name = httpclient.InferInput("MODEL_NAME", [1, 1], "BYTES")
    name.set_data_from_numpy(np.array([[target.encode()]], dtype=np.object_))
    result = pyclient.infer(model, [name, *add_sub_inputs(a, b, "INT32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_bls_to_an_unknown_model_is_an_error_response(pyclient):
    a = np.zeros((1, 16), np.int32)
    name = httpclient.InferInput("MODEL_NAME", [1, 1], "BYTES")
    name.set_data_from_numpy(np.array([[b"missing"]], dtype=np.object_))
    with pytest.raises(InferenceServerException) as info:
        pyclient.infer("bls_sync", [name, *add_sub_inputs(a, a, "INT32")])
    assert "Model 'missing' is not ready" in info.value.message()


def test_bls_sequence_with_a_correlation_id(pyclient):
    inp = httpclient.InferInput("X", [1], "INT32")
    inp.set_data_from_numpy(np.array([5], np.int32))
    result = pyclient.infer("bls_sequence", [inp])
    # simple_dyna_sequence: INPUT + START, INPUT, INPUT + END * CORRID
    assert result.as_numpy("Y").tolist() == [6, 5, 47]
    assert result.as_numpy("REFUSED").tolist() == [True]  # exec() of a decoupled model


def test_bls_decoupled_stream_and_a_model_calling_itself(pyclient):
    inp = httpclient.InferInput("N", [1], "INT32")
    inp.set_data_from_numpy(np.array([3], np.int32))
    result = pyclient.infer("bls_decoupled", [inp])
    assert result.as_numpy("SUM").tolist() == [9]  # 3 responses of 3 from square_int32
    assert result.as_numpy("DEPTH").tolist() == [3]  # 3 nested calls to itself, one instance


# ---- metrics and logging -----------------------------------------------------------------------


def metric_value(server, series: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_custom_metrics_on_the_metrics_port(pyserver, pyclient):
    import urllib.request

    x = np.array([1, 2, 3, 4], np.float32)
    for _ in range(3):
        pyclient.infer("custom_metrics", add_sub_inputs(x, x))
    text = urllib.request.urlopen(pyserver.metrics_url, timeout=10).read().decode()
    labels = '{model="custom_metrics",version="1"}'
    assert "# TYPE requests_process_total counter" in text
    assert f"requests_process_total{labels} 3" in text
    assert f"last_input_sum{labels} 10" in text
    assert "# TYPE input_sum_hist histogram" in text
    assert 'input_sum_hist_bucket{model="custom_metrics",version="1",le="10"} 3' in text
    assert f"input_sum_hist_count{labels} 3" in text
    assert "nv_inference_count" in text  # beside Triton's own


def test_logger_writes_through_naiads_log(pyserver, pyclient):
    x = np.ones(4, np.float32)
    pyclient.infer("custom_metrics", add_sub_inputs(x, x))
    log = pyserver.log()
    assert "model.py:" in log and "custom_metrics initialized" in log
    assert "refused as expected: Failed to increment metric value" in log


def test_other_models_serve_while_one_streams(pyserver, pyclient):
    errors = []

    def stream():
        try:
            sse_events(pyserver, "repeat_int32", {"IN": list(range(10)), "DELAY": 20})
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=stream)
    thread.start()
    x = np.ones(4, np.float32)
    for _ in range(5):
        pyclient.infer("add_sub", add_sub_inputs(x, x))
    thread.join()
    assert not errors


class _StreamReplies:
    """tritonclient.grpc stream callback: (result, error) pairs, in arrival order."""

    def __init__(self):
        import queue

        self.items = queue.Queue()

    def __call__(self, result, error):
        self.items.put((result, error))

    def take(self, n, timeout=30):
        return [self.items.get(timeout=timeout) for _ in range(n)]


def test_decoupled_square_over_a_grpc_stream(pyserver):
    """NVIDIA's square_int32 client: IN = n gives n responses of n over ModelStreamInfer, then
    an empty final response when asked; another request on the same stream is served after."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(pyserver.grpc_url)
    replies = _StreamReplies()
    client.start_stream(callback=replies)
    try:
        for n in (3, 0, 2):
            inp = grpcclient.InferInput("IN", [1], "INT32")
            inp.set_data_from_numpy(np.array([n], dtype=np.int32))
            client.async_stream_infer(
                "square_int32", [inp], request_id=f"sq{n}", enable_empty_final_response=True
            )
        got = replies.take(3 + 1 + 0 + 1 + 2 + 1)
    finally:
        client.stop_stream()
        client.close()
    assert all(error is None for _, error in got), [e for _, e in got if e]
    by_id: dict[str, list] = {}
    for result, _ in got:
        response = result.get_response()
        final = response.parameters["triton_final_response"].bool_param
        out = result.as_numpy("OUT")
        by_id.setdefault(response.id, []).append((None if out is None else int(out[0]), final))
    assert by_id["sq3"] == [(3, False)] * 3 + [(None, True)]
    assert by_id["sq0"] == [(None, True)]
    assert by_id["sq2"] == [(2, False)] * 2 + [(None, True)]


def test_decoupled_repeat_over_a_grpc_stream(pyserver):
    """repeat_int32 (``async def execute``): each value back with its index, in order."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(pyserver.grpc_url)
    replies = _StreamReplies()
    client.start_stream(callback=replies)
    try:
        values = grpcclient.InferInput("IN", [4], "INT32")
        values.set_data_from_numpy(np.array([7, 8, 9, 10], dtype=np.int32))
        delay = grpcclient.InferInput("DELAY", [1], "UINT32")
        delay.set_data_from_numpy(np.array([2], dtype=np.uint32))
        client.async_stream_infer("repeat_int32", [values, delay], request_id="rep")
        got = replies.take(4)
    finally:
        client.stop_stream()
        client.close()
    assert all(error is None for _, error in got)
    assert [int(r.as_numpy("OUT")[0]) for r, _ in got] == [7, 8, 9, 10]
    assert [int(r.as_numpy("IDX")[0]) for r, _ in got] == [0, 1, 2, 3]


def test_the_example_python_repository_serves_add_sub(tmp_path):
    """examples/python_model_repository, as README points a new user to it: HTTP and gRPC."""
    import tritonclient.grpc as grpcclient
    from conftest import ROOT, start_server

    srv = start_server(ROOT / "examples" / "python_model_repository", log_dir=tmp_path)
    try:
        a = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
        b = np.array([0.5, 0.5, 0.5, 0.5], dtype=np.float32)
        for module, url in ((httpclient, srv.url), (grpcclient, srv.grpc_url)):
            client = module.InferenceServerClient(url)
            inputs = [module.InferInput(n, [4], "FP32") for n in ("INPUT0", "INPUT1")]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(b)
            result = client.infer("add_sub", inputs)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
            client.close()
    finally:
        srv.stop()
    assert "add_sub: finalize" in srv.log()
