"""NVIDIA's tritonclient HTTP examples, ported, plus Triton's extensions and server lifecycle.

Each ``test_example_*`` makes the checks of one program in triton-inference-server/client
``src/python/examples/`` (the string examples' checks live in test_http_v2.py).
"""

from __future__ import annotations

import json
import signal
import threading
import time

import gevent
import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import sleep_config
from httphelpers import raw, simple_inputs
from tritonclient.utils import InferenceServerException

QUERY = {"test_1": 1, "test_2": 2}


def ok(client):
    a, b, inputs = simple_inputs()
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a + b)


# ---- the examples -------------------------------------------------------------------------------


def test_example_health_metadata(client):
    """simple_http_health_metadata.py"""
    assert client.is_server_live(query_params=QUERY)
    assert client.is_server_ready(query_params=QUERY)
    assert client.is_model_ready("simple", query_params=QUERY)
    assert client.get_server_metadata(query_params=QUERY)["name"] == "triton"
    assert client.get_model_metadata("simple", query_params=QUERY)["name"] == "simple"
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("wrong_model_name")
    assert "Request for unknown model" in info.value.message()


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_example_infer_client(client, compression):
    """simple_http_infer_client.py: INPUT0 as JSON, INPUT1 binary; OUTPUT0 binary, OUTPUT1 JSON."""
    input0 = np.arange(16, dtype=np.int32).reshape(1, 16)
    input1 = np.full((1, 16), -1, dtype=np.int32)
    inputs = [
        httpclient.InferInput("INPUT0", [1, 16], "INT32"),
        httpclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(input0, binary_data=False)
    inputs[1].set_data_from_numpy(input1, binary_data=True)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]
    kwargs = dict(
        query_params=QUERY,
        headers={"test-header": "example"},
        request_compression_algorithm=compression,
        response_compression_algorithm=compression,
    )
    for outs in (outputs, None):
        result = client.infer("simple", inputs, outputs=outs, **kwargs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), input0 + input1)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), input0 - input1)
    by_name = {o["name"]: o for o in result.get_response()["outputs"]}
    assert all("binary_data_size" in o["parameters"] for o in by_name.values())
    stats = client.get_inference_statistics("simple")
    assert len(stats["model_stats"]) == 1


def test_example_async_infer_client(server):
    """simple_http_async_infer_client.py: async_infer from a gevent pool."""
    c = httpclient.InferenceServerClient(server.url, concurrency=4)
    try:
        pending = []
        for i in range(8):
            a, b, inputs = simple_inputs()
            inputs[0].set_data_from_numpy(a + i)
            pending.append((i, a, b, c.async_infer("simple", inputs, request_id=str(i))))
        for i, a, b, req in pending:
            result = req.get_result()
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + i + b)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a + i - b)
            assert result.get_response()["id"] == str(i)
    finally:
        gevent.sleep(0)
        c.close()


async def test_example_aio_infer_client(server):
    """simple_http_aio_infer_client.py: the aiohttp-based client, with statistics."""
    import tritonclient.http.aio as aioclient

    async with aioclient.InferenceServerClient(server.url) as c:
        assert await c.is_server_live()
        assert await c.is_model_ready("simple")
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        b = np.ones((1, 16), dtype=np.int32)
        inputs = [
            aioclient.InferInput("INPUT0", [1, 16], "INT32"),
            aioclient.InferInput("INPUT1", [1, 16], "INT32"),
        ]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b, binary_data=False)
        outputs = [
            aioclient.InferRequestedOutput("OUTPUT0"),
            aioclient.InferRequestedOutput("OUTPUT1", binary_data=False),
        ]
        result = await c.infer("simple", inputs, outputs=outputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        stats = await c.get_inference_statistics("simple")
        assert len(stats["model_stats"]) == 1
        assert stats["model_stats"][0]["inference_stats"]["success"]["count"] >= 1


def test_example_model_control(server_factory, example_repo):
    """simple_http_model_control.py, with the server in EXPLICIT mode."""
    srv = server_factory(example_repo, "--model-control-mode=explicit")
    c = httpclient.InferenceServerClient(srv.url)
    folders = [p for p in example_repo.iterdir() if (p / "config.pbtxt").exists()]
    assert len(c.get_model_repository_index()) == len(folders)
    c.load_model("simple")
    assert c.is_model_ready("simple")
    with pytest.raises(InferenceServerException) as info:
        c.load_model("simple", config='"parameters": {"config": {{"max_batch_size": "16"}}}')
    assert "failed to load" in info.value.message()
    c.load_model("simple", config='{"max_batch_size":"16"}')
    assert c.get_model_config("simple")["max_batch_size"] == 16
    c.unload_model("simple")
    assert not c.is_model_ready("simple")
    with pytest.raises(InferenceServerException) as info:
        c.load_model("wrong_model_name")
    assert "failed to load" in info.value.message()
    assert info.value.message().startswith("failed to load 'wrong_model_name'")
    c.close()


# ---- classification with labels, request parameters --------------------------------------------


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, models):
    """``simple`` whose OUTPUT0 has a label file, in a repository of its own."""
    repo = tmp_path_factory.mktemp("labelled")
    models.write_simple(repo)
    config = repo / "simple" / "config.pbtxt"
    text = config.read_text()
    head, sep, tail = text.partition('name: "OUTPUT0"')
    config.write_text(head + sep + '\n    label_filename: "labels.txt"' + tail)
    (repo / "simple" / "labels.txt").write_text("".join(f"label_{i}\n" for i in range(16)))
    return repo


@pytest.mark.parametrize("binary", [True, False])
def test_classification_with_labels(server_factory, labelled, binary):
    srv = server_factory(labelled)
    c = httpclient.InferenceServerClient(srv.url)
    assert c.get_model_config("simple")["output"][0]["label_filename"] == "labels.txt"
    a = np.array([[5, 1, 9, 3] + [0] * 12, [0] * 15 + [7]], dtype=np.int32)
    inputs = [
        httpclient.InferInput("INPUT0", [2, 16], "INT32"),
        httpclient.InferInput("INPUT1", [2, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(np.zeros_like(a))
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary, class_count=3),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary, class_count=2),
    ]
    result = c.infer("simple", inputs, outputs=outputs)
    out = {o["name"]: o for o in result.get_response()["outputs"]}
    assert out["OUTPUT0"]["datatype"] == "BYTES" and out["OUTPUT0"]["shape"] == [2, 3]
    top = [
        [x.decode() if isinstance(x, bytes) else x for x in row]
        for row in result.as_numpy("OUTPUT0")
    ]
    assert top[0] == ["9:2:label_2", "5:0:label_0", "3:3:label_3"]
    assert top[1][0] == "7:15:label_15"
    plain = result.as_numpy("OUTPUT1")  # no label file: value:index
    assert [x.decode() if isinstance(x, bytes) else x for x in plain[0]] == ["9:2", "5:0"]
    c.close()


def test_request_parameters_are_accepted(client):
    a, b, inputs = simple_inputs()
    result = client.infer("simple", inputs, priority=1, timeout=10_000_000, request_id="p")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    result = client.infer("simple", inputs, parameters={"custom": "value", "n": 3})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


# ---- trace settings ------------------------------------------------------------------------------


def test_trace_settings(server_factory, example_repo):
    srv = server_factory(example_repo)
    c = httpclient.InferenceServerClient(srv.url)
    assert "trace" in c.get_server_metadata()["extensions"]
    assert c.get_trace_settings() == {
        "trace_level": ["OFF"],
        "trace_rate": "1000",
        "trace_count": "-1",
        "log_frequency": "0",
        "trace_file": "",
        "trace_mode": "triton",
    }
    got = c.update_trace_settings(settings={"trace_rate": "2", "trace_level": ["TIMESTAMPS"]})
    assert (got["trace_rate"], got["trace_level"]) == ("2", ["TIMESTAMPS"])
    # a model's settings are the global ones plus its own overrides
    got = c.update_trace_settings("simple", {"trace_count": "5", "trace_level": ["TENSORS"]})
    assert (got["trace_rate"], got["trace_count"], got["trace_level"]) == ("2", "5", ["TENSORS"])
    assert c.get_trace_settings()["trace_count"] == "-1"
    assert c.get_trace_settings("simple")["trace_count"] == "5"
    got = c.update_trace_settings("simple", {"trace_level": None})  # null: back to the global
    assert got["trace_level"] == ["TIMESTAMPS"] and got["trace_count"] == "5"
    got = c.update_trace_settings(settings={"trace_level": ["OFF"], "trace_rate": None})
    assert (got["trace_level"], got["trace_rate"]) == (["OFF"], "1000")
    bad = [
        ({"trace_file": "/tmp/x"}, 501, "trace file location can not be updated"),
        ({"trace_level": ["OFF", "TENSORS"]}, 400, "Expect only one trace level 'OFF'"),
        ({"trace_level": ["LOUD"]}, 400, "Unable to parse 'trace_level'"),
        ({"trace_rate": "abc"}, 400, "Unable to parse 'trace_rate', got: abc"),
        ({"trace_rate": "-1"}, 400, "'trace_rate', value is out of range"),
        ({"trace_count": "-2"}, 400, "Expecting value >= -1"),
        ({"log_frequency": "99999999999"}, 400, "'log_frequency', value is out of range"),
    ]
    for body, status, fragment in bad:
        got_status, _, payload = raw(srv, "POST", "/v2/trace/setting", json.dumps(body).encode())
        assert got_status == status and fragment in json.loads(payload)["error"], body
    status, _, payload = raw(srv, "GET", "/v2/models/nope/trace/setting")
    assert status == 400 and json.loads(payload)["error"] == "Request for unknown model : nope"
    assert c.get_trace_settings()["trace_rate"] == "1000"  # nothing changed by the bad ones
    c.close()


# ---- logging settings ----------------------------------------------------------------------------


def test_log_settings(server_factory, example_repo):
    srv = server_factory(example_repo)
    c = httpclient.InferenceServerClient(srv.url)
    assert c.get_log_settings() == {
        "log_file": "",
        "log_info": True,
        "log_warning": True,
        "log_error": True,
        "log_verbose_level": 0,
        "log_format": "default",
    }
    got = c.update_log_settings({"log_verbose_level": 1, "log_info": False})
    assert got["log_verbose_level"] == 1 and got["log_info"] is False
    assert got["log_warning"] is True  # the full set comes back
    for body, status in (
        ({"log_verbose_level": -1}, 400),
        ({"log_info": "yes"}, 400),
        ({"log_format": "json"}, 400),
        ({"log_file": "/tmp/elsewhere.log"}, 501),
    ):
        got_status, _, payload = raw(srv, "POST", "/v2/logging", json.dumps(body).encode())
        assert got_status == status and json.loads(payload)["error"], body
    assert c.get_log_settings()["log_verbose_level"] == 1
    c.close()


# ---- lifecycle ----------------------------------------------------------------------------------

SLEEP_CONFIG = sleep_config(1)


@pytest.fixture
def sleepy_repo(tmp_path):
    repo = tmp_path / "sleepy_repo"
    (repo / "sleepy" / "1").mkdir(parents=True)
    (repo / "sleepy" / "config.pbtxt").write_text(SLEEP_CONFIG)
    return repo


def _sleep_input(ms: float):
    inp = httpclient.InferInput("INPUT0", [1, 1], "FP32")
    inp.set_data_from_numpy(np.array([[ms]], dtype=np.float32))
    return [inp]


def test_sigterm_finishes_in_flight_and_refuses_new(server_factory, sleepy_repo):
    srv = server_factory(sleepy_repo, "--plugin", "naiad_test_backends")
    done = {}

    def slow():
        c = httpclient.InferenceServerClient(srv.url, network_timeout=30)
        done["result"] = c.infer("sleepy", _sleep_input(2000.0)).as_numpy("OUTPUT0")
        c.close()

    worker = threading.Thread(target=slow)
    worker.start()
    time.sleep(0.5)  # the slow request is executing
    srv.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    fresh = httpclient.InferenceServerClient(srv.url)
    with pytest.raises(InferenceServerException) as info:
        fresh.infer("sleepy", _sleep_input(1.0))
    assert (info.value.status(), info.value.message()) == ("503", "Server exiting")
    status, _, body = raw(srv, "GET", "/v2/health/live")
    assert (status, json.loads(body)) == (503, {"error": "Server exiting"})
    assert not fresh.is_server_ready()
    fresh.close()
    worker.join(30)
    assert done["result"][0, 0] == 2000.0  # the in-flight request finished normally
    assert srv.process.wait(30) == 0


def test_exit_timeout_expires(server_factory, sleepy_repo):
    srv = server_factory(sleepy_repo, "--plugin", "naiad_test_backends", "--exit-timeout-secs", "1")
    worker = threading.Thread(
        target=lambda: _swallow(
            lambda: httpclient.InferenceServerClient(srv.url, network_timeout=30).infer(
                "sleepy", _sleep_input(10_000.0)
            )
        ),
        daemon=True,
    )
    worker.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    srv.process.send_signal(signal.SIGTERM)
    assert srv.process.wait(10) == 1
    assert time.monotonic() - t0 < 5
    assert "Exit timeout expired. Exiting immediately." in srv.log()


def _swallow(call):
    try:
        call()
    except Exception:  # the server went away under it: that is the point
        pass


def test_strict_readiness_false(server_factory, tmp_path, models):
    repo = tmp_path / "repo"
    models.write_simple(repo)
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text("max_batch_size: [[[\n")
    strict = server_factory(repo, "--exit-on-error=false")
    relaxed = server_factory(repo, "--exit-on-error=false", "--strict-readiness=false")
    assert raw(strict, "GET", "/v2/health/ready")[0] == 400
    assert raw(relaxed, "GET", "/v2/health/ready")[0] == 200
    assert raw(relaxed, "GET", "/api/health/ready")[0] == 200
    c = httpclient.InferenceServerClient(relaxed.url)
    ok(c)
    c.close()


def test_allow_http_false(server_factory, example_repo):
    srv = server_factory(example_repo, "--allow-http=false")
    assert srv.process.poll() is None
    with pytest.raises(ConnectionRefusedError):
        raw(srv, "GET", "/v2/health/live")
