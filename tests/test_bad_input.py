"""Bad input gets Triton's error form and status, and the server keeps serving everything."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from httphelpers import raw, simple_inputs
from tritonclient.utils import InferenceServerException


def _error(status_body):
    status, _, body = status_body
    return status, json.loads(body)["error"]


def _ok(client):
    a, b, inputs = simple_inputs()
    result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


def _json_req(**overrides):
    req = {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
        ]
    }
    req.update(overrides)
    return json.dumps(req).encode()


def _input(name="INPUT0", shape=(1, 16), datatype="INT32", data=None):
    return {
        "name": name,
        "shape": list(shape),
        "datatype": datatype,
        "data": data if data is not None else [0] * int(np.prod(shape)),
    }


CASES = [
    # (id, body, headers, status, message fragment)
    ("malformed json", b'{"inputs": [', {}, 500, "failed to parse the request JSON buffer"),
    ("not an object", b"[1, 2]", {}, 500, "failed to parse the request JSON buffer"),
    ("inputs not array", b'{"inputs": 3}', {}, 500, "Unable to parse 'inputs'"),
    (
        "missing input",
        json.dumps({"inputs": [_input()]}).encode(),
        {},
        400,
        "expected 2 inputs but got 1 inputs for model 'simple'",
    ),
    (
        "extra input",
        json.dumps({"inputs": [_input(), _input("INPUT1"), _input("EXTRA")]}).encode(),
        {},
        400,
        "unexpected inference input 'EXTRA' for model 'simple'",
    ),
    (
        "wrong datatype",
        json.dumps(
            {"inputs": [_input(datatype="FP32", data=[0.0] * 16), _input("INPUT1")]}
        ).encode(),
        {},
        400,
        "inference input 'INPUT0' data-type is 'FP32', but model 'simple' expects 'INT32'",
    ),
    (
        "wrong shape",
        json.dumps({"inputs": [_input(shape=(1, 8)), _input("INPUT1")]}).encode(),
        {},
        400,
        "unexpected shape for input 'INPUT0' for model 'simple'",
    ),
    (
        "batch too large",
        json.dumps({"inputs": [_input(shape=(9, 16)), _input("INPUT1", shape=(9, 16))]}).encode(),
        {},
        400,
        "batch-size must be <= 8 for 'simple'",
    ),
    (
        "element count",
        json.dumps({"inputs": [_input(data=[1, 2, 3]), _input("INPUT1")]}).encode(),
        {},
        500,
        "Shape does not match true shape of 'data' field",
    ),
    (
        "negative dim",
        json.dumps({"inputs": [_input(shape=(-1, 16)), _input("INPUT1")]}).encode(),
        {},
        500,
        "Unable to parse 'shape'",
    ),
    (
        "unknown output",
        _json_req(outputs=[{"name": "NOPE"}]),
        {},
        400,
        "unexpected inference output 'NOPE' for model 'simple'",
    ),
    (
        "duplicate output",
        _json_req(outputs=[{"name": "OUTPUT0"}, {"name": "OUTPUT0"}]),
        {},
        400,
        "output 'OUTPUT0' already exists in request",
    ),
    (
        "reserved parameter",
        _json_req(parameters={"triton_x": 1}),
        {},
        400,
        "parameter keys starting with 'triton_' are reserved",
    ),
    (
        "bad header length",
        _json_req(),
        {"Inference-Header-Content-Length": "99999"},
        400,
        "Inference-Header-Content-Length",
    ),
    (
        "header length not a number",
        _json_req(),
        {"Inference-Header-Content-Length": "abc"},
        400,
        "Inference-Header-Content-Length",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_json_requests(server, client, case):
    _, body, headers, status, fragment = case
    got_status, message = _error(raw(server, "POST", "/v2/models/simple/infer", body, headers))
    assert got_status == status, message
    assert fragment in message
    _ok(client)


def _binary_request(declared: int, actual: int, header_delta: int = 0):
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [1, 16],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": declared},
                },
                {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
            ]
        }
    ).encode()
    body = header + bytes(actual)
    return body, {"Inference-Header-Content-Length": str(len(header) + header_delta)}


@pytest.mark.parametrize(
    "declared,actual,fragment",
    [
        (64, 60, "unexpected size for input 'INPUT0'"),
        (64, 68, "unexpected additional input data for model 'simple'"),
        (60, 60, "input byte size mismatch for input 'INPUT0'"),
    ],
)
def test_binary_size_mismatch(server, client, declared, actual, fragment):
    body, headers = _binary_request(declared, actual)
    status, message = _error(raw(server, "POST", "/v2/models/simple/infer", body, headers))
    assert status == 400 and fragment in message
    _ok(client)


def test_binary_without_header_length(server, client):
    body, _ = _binary_request(64, 64)
    status, message = _error(raw(server, "POST", "/v2/models/simple/infer", body, {}))
    assert status in (400, 500)
    _ok(client)


def test_bytes_length_prefix_past_buffer(server, client):
    blob = (1000).to_bytes(4, "little") + b"abc"
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [1, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    status, message = _error(
        raw(
            server,
            "POST",
            "/v2/models/simple_identity/infer",
            header + blob,
            {"Inference-Header-Content-Length": str(len(header))},
        )
    )
    assert status == 400 and "claims 1000 bytes" in message
    _ok(client)


def test_unknown_model_and_version_infer(server, client):
    status, message = _error(raw(server, "POST", "/v2/models/nope/infer", _json_req()))
    assert status == 404 and "Request for unknown model: 'nope' is not found" in message
    status, message = _error(raw(server, "POST", "/v2/models/simple/versions/3/infer", _json_req()))
    assert status == 404 and "'simple' version 3 is not found" in message
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", simple_inputs()[2])
    _ok(client)


def test_wrong_method(server, client):
    status, message = _error(raw(server, "GET", "/v2/models/simple/infer"))
    assert status == 405
    _ok(client)


def test_oversize_body_is_413(server_factory, example_repo):
    srv = server_factory(example_repo, "--http-max-input-size", "4096")
    big = _json_req(id="x" * 10000)
    status, message = _error(raw(srv, "POST", "/v2/models/simple/infer", big))
    assert status == 413
    c = httpclient.InferenceServerClient(srv.url)
    _ok(c)
    c.close()


@pytest.fixture(scope="module")
def plugin_repo(tmp_path_factory):
    """Models served by the test plugins: one that sleeps, one that raises."""
    repo = tmp_path_factory.mktemp("plugin_repo")
    for name, backend in (("sleepy", "test_sleep"), ("failing", "test_fail")):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(
            f'backend: "{backend}"\nmax_batch_size: 4\n'
            'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
            'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
            "instance_group [{ kind: KIND_CPU count: 1 }]\n"
        )
    return repo


def _one(value: float, name="INPUT0"):
    inp = httpclient.InferInput(name, [1, 1], "FP32")
    inp.set_data_from_numpy(np.array([[value]], dtype=np.float32))
    return [inp]


def test_backend_that_raises_fails_only_its_request(server_factory, plugin_repo, example_repo):
    srv = server_factory([plugin_repo, example_repo], "--plugin", "naiad_test_backends")
    c = httpclient.InferenceServerClient(srv.url)
    with pytest.raises(InferenceServerException) as info:
        c.infer("failing", _one(-1.0))
    assert "negative input" in info.value.message()
    assert "failing" in info.value.message()
    assert info.value.status() == "500"
    assert c.infer("failing", _one(2.0)).as_numpy("OUTPUT0")[0, 0] == 2.0
    _ok(c)
    stats = c.get_inference_statistics("failing")["model_stats"][0]["inference_stats"]
    assert stats["fail"]["count"] == 1 and stats["success"]["count"] == 1
    c.close()


def test_health_answers_while_a_slow_model_runs(server_factory, plugin_repo, example_repo):
    srv = server_factory([plugin_repo, example_repo], "--plugin", "naiad_test_backends")
    slow = httpclient.InferenceServerClient(srv.url, network_timeout=30)
    fast = httpclient.InferenceServerClient(srv.url)
    done = threading.Event()

    def run_slow():
        slow.infer("sleepy", _one(1500.0))
        done.set()

    worker = threading.Thread(target=run_slow)
    worker.start()
    time.sleep(0.2)  # the slow request is executing now
    latencies = []
    for _ in range(10):
        t0 = time.monotonic()
        assert fast.is_server_live()
        latencies.append(time.monotonic() - t0)
    _ok(fast)
    assert not done.is_set(), "the slow request should still be running"
    assert max(latencies) < 0.5
    worker.join()
    assert done.is_set()
    slow.close()
    fast.close()


def test_broken_models_are_unavailable_and_others_serve(server_factory, tmp_path, models):
    repo = tmp_path / "repo"
    models.write_simple(repo)
    (repo / "bad_pbtxt" / "1").mkdir(parents=True)
    (repo / "bad_pbtxt" / "config.pbtxt").write_text("max_batch_size: [[[\n")
    (repo / "unknown_platform" / "1").mkdir(parents=True)
    (repo / "unknown_platform" / "config.pbtxt").write_text('platform: "nonsense_platform"\n')
    (repo / "missing_file" / "1").mkdir(parents=True)
    (repo / "missing_file" / "config.pbtxt").write_text(
        (repo / "simple" / "config.pbtxt")
        .read_text()
        .replace('name: "simple"', 'name: "missing_file"')
    )
    (repo / "corrupt_file" / "1").mkdir(parents=True)
    (repo / "corrupt_file" / "1" / "model.onnx").write_bytes(b"this is not onnx")
    (repo / "corrupt_file" / "config.pbtxt").write_text(
        (repo / "simple" / "config.pbtxt")
        .read_text()
        .replace('name: "simple"', 'name: "corrupt_file"')
    )
    srv = server_factory(repo, "--exit-on-error=false")
    c = httpclient.InferenceServerClient(srv.url)
    _ok(c)
    assert c.is_server_live()
    assert not c.is_server_ready()  # strict readiness: some models are not ready
    index = {e["name"]: e for e in c.get_model_repository_index()}
    assert index["simple"]["state"] == "READY"
    for name in ("bad_pbtxt", "unknown_platform", "missing_file", "corrupt_file"):
        assert index[name]["state"] == "UNAVAILABLE", index[name]
        assert index[name]["reason"], index[name]
        assert not c.is_model_ready(name)
    assert (
        "unknown_platform" in index["unknown_platform"]["reason"]
        or "nonsense_platform" in index["unknown_platform"]["reason"]
    )
    c.close()


def test_exit_on_error_default_exits(server_factory, tmp_path):
    repo = tmp_path / "repo"
    (repo / "bad" / "1").mkdir(parents=True)
    (repo / "bad" / "config.pbtxt").write_text("this is { not pbtxt")
    srv = server_factory(repo, wait_ready=False)
    assert srv.process.wait(30) != 0
    assert "bad" in srv.log()
