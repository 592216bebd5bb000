"""Model control modes NONE, POLL and EXPLICIT, reloads under load, and the load API's safety."""

from __future__ import annotations

import base64
import json
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from httphelpers import raw, simple_inputs
from tritonclient.utils import InferenceServerException


def wait_for(predicate, timeout=20.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def infer_ok(client) -> bool:
    a, b, inputs = simple_inputs()
    result = client.infer("simple", inputs)
    return bool((result.as_numpy("OUTPUT0") == a + b).all())


def set_max_batch(repo, name, value):
    cfg = repo / name / "config.pbtxt"
    text = cfg.read_text()
    import re

    cfg.write_text(re.sub(r"max_batch_size: \d+", f"max_batch_size: {value}", text))


# ---- POLL ------------------------------------------------------------------------------------


def test_poll_mode_follows_the_repository(server_factory, tmp_path, models):
    repo = tmp_path / "repo"
    models.write_simple(repo)
    srv = server_factory(
        repo, "--model-control-mode=poll", "--repository-poll-secs=0.3", "--exit-on-error=false"
    )
    c = httpclient.InferenceServerClient(srv.url)
    assert infer_ok(c)
    # added
    models.write_mlp(repo)
    assert wait_for(lambda: c.is_model_ready("mlp"))
    # changed
    set_max_batch(repo, "simple", 4)
    assert wait_for(lambda: c.get_model_config("simple")["max_batch_size"] == 4)
    assert infer_ok(c)
    # broken: the old config keeps serving and the failure is reported
    (repo / "simple" / "config.pbtxt").write_text("max_batch_size: [[[ broken")
    time.sleep(1.2)
    assert c.is_model_ready("simple")
    assert c.get_model_config("simple")["max_batch_size"] == 4
    assert infer_ok(c)
    assert "failed to load model 'simple'" in srv.log()
    # fixed
    models.write_simple(repo)
    assert wait_for(lambda: c.get_model_config("simple")["max_batch_size"] == 8)
    # a new version folder appears (latest 1): it replaces version 1
    (repo / "simple" / "2").mkdir()
    (repo / "simple" / "2" / "model.onnx").write_bytes(
        (repo / "simple" / "1" / "model.onnx").read_bytes()
    )
    assert wait_for(lambda: c.get_model_metadata("simple")["versions"] == ["2"])
    assert infer_ok(c)
    # removed
    import shutil

    shutil.rmtree(repo / "mlp")
    assert wait_for(lambda: not c.is_model_ready("mlp"))
    assert infer_ok(c)
    with pytest.raises(InferenceServerException, match="polling is enabled"):
        c.load_model("simple")
    c.close()


# ---- NONE ------------------------------------------------------------------------------------


def test_none_mode_ignores_changes_and_refuses_the_api(server_factory, tmp_path, models):
    repo = tmp_path / "repo"
    models.write_simple(repo)
    srv = server_factory(repo)
    c = httpclient.InferenceServerClient(srv.url)
    models.write_mlp(repo)
    set_max_batch(repo, "simple", 2)
    time.sleep(1.0)
    assert not c.is_model_ready("mlp")
    assert c.get_model_config("simple")["max_batch_size"] == 8
    for call in (lambda: c.load_model("mlp"), lambda: c.unload_model("simple")):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "503"
    assert infer_ok(c)
    c.close()


# ---- EXPLICIT --------------------------------------------------------------------------------


@pytest.fixture
def explicit(server_factory, tmp_path, models):
    repo = tmp_path / "repo"
    models.write_simple(repo)
    models.write_mlp(repo)
    srv = server_factory(
        repo,
        "--model-control-mode=explicit",
        "--load-model=simple",
        "--plugin",
        "naiad_test_backends",
    )
    c = httpclient.InferenceServerClient(srv.url, network_timeout=60)
    yield srv, c, repo
    c.close()


def test_explicit_load_unload_and_overrides(explicit, models):
    srv, c, repo = explicit
    assert c.is_model_ready("simple")
    assert not c.is_model_ready("mlp")
    index = {e["name"]: e for e in c.get_model_repository_index()}
    assert "state" not in index["mlp"]
    c.load_model("mlp")
    assert c.is_model_ready("mlp")
    # config override, int64 given as a string as in NVIDIA's example
    config = c.get_model_config("simple")
    config["max_batch_size"] = "16"
    c.load_model("simple", config=json.dumps(config))
    assert c.get_model_config("simple")["max_batch_size"] == 16
    assert infer_ok(c)
    with pytest.raises(InferenceServerException, match="failed to load"):
        c.load_model("simple", config='{"max_batch_size": "not a number"}')
    assert infer_ok(c)  # the failed reload left the model serving
    with pytest.raises(InferenceServerException, match="failed to load"):
        c.load_model("wrong_model_name")
    c.unload_model("simple")
    assert not c.is_model_ready("simple")
    index = {(e["name"], e.get("version")): e for e in c.get_model_repository_index()}
    assert index[("simple", "1")]["state"] == "UNAVAILABLE"
    assert index[("simple", "1")]["reason"] == "unloaded"
    c.unload_model("never_heard_of_it")  # a no-op, as in Triton


def test_explicit_file_override(explicit, models, tmp_path):
    srv, c, repo = explicit
    onnx_bytes = (repo / "simple" / "1" / "model.onnx").read_bytes()
    config = {
        "name": "uploaded",
        "platform": "onnxruntime_onnx",
        "max_batch_size": 8,
        "input": [{"name": f"INPUT{i}", "data_type": "TYPE_INT32", "dims": [16]} for i in (0, 1)],
        "output": [{"name": f"OUTPUT{i}", "data_type": "TYPE_INT32", "dims": [16]} for i in (0, 1)],
    }
    c.load_model("uploaded", config=json.dumps(config), files={"file:1/model.onnx": onnx_bytes})
    a, b, inputs = simple_inputs()
    result = c.infer("uploaded", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert not (repo / "uploaded").exists()  # nothing was written into the repository
    c.unload_model("uploaded")
    assert not c.is_model_ready("uploaded")


@pytest.mark.parametrize(
    "path",
    [
        "../escape.onnx",
        "1/../../escape.onnx",
        "/tmp/escape.onnx",
        "1\\..\\escape.onnx",
        "1//x",
        "./1/model.onnx",
    ],
)
def test_file_override_path_traversal_refused(explicit, path, tmp_path):
    srv, c, repo = explicit
    body = json.dumps(
        {
            "parameters": {
                "config": json.dumps({"platform": "onnxruntime_onnx"}),
                f"file:{path}": base64.b64encode(b"payload").decode(),
            }
        }
    ).encode()
    status, _, payload = raw(srv, "POST", "/v2/repository/models/evil/load", body)
    assert status == 400, payload
    assert "relative path" in json.loads(payload)["error"]
    assert not (repo.parent / "escape.onnx").exists()
    assert not (tmp_path / "escape.onnx").exists()
    assert infer_ok(c)


def test_config_override_cannot_name_outside_files(explicit):
    srv, c, repo = explicit
    config = c.get_model_config("simple")
    config["default_model_filename"] = "../../../etc/passwd"
    with pytest.raises(InferenceServerException, match="relative path inside the model folder"):
        c.load_model("simple", config=json.dumps(config))
    assert infer_ok(c)


def test_invalid_model_names_refused(explicit):
    srv, c, repo = explicit
    for name in (".hidden", "a%00b"):
        status, _, payload = raw(srv, "POST", f"/v2/repository/models/{name}/load", b"")
        assert status == 400, payload


def test_reload_under_continuous_load_loses_nothing(explicit):
    srv, c, repo = explicit
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def hammer():
        client = httpclient.InferenceServerClient(srv.url)
        while not stop.is_set():
            try:
                ok = infer_ok(client)
                with lock:
                    counts["ok" if ok else "failed"] += 1
            except InferenceServerException as exc:
                with lock:
                    counts["failed"] += 1
                    errors.append(exc.message())
        client.close()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    config = c.get_model_config("simple")
    for size in (4, 8, 2, 8):
        config["max_batch_size"] = size
        c.load_model("simple", config=json.dumps(config))
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(30)
    assert counts["failed"] == 0, errors[:3]
    assert counts["ok"] > 20
    assert c.get_model_config("simple")["max_batch_size"] == 8


def test_unload_waits_for_in_flight_request(explicit):
    srv, c, repo = explicit
    (repo / "sleepy" / "1").mkdir(parents=True)
    (repo / "sleepy" / "config.pbtxt").write_text(
        'backend: "test_sleep"\nmax_batch_size: 4\n'
        'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
        'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
    )
    c.load_model("sleepy")
    result: dict = {}

    def slow():
        client = httpclient.InferenceServerClient(srv.url, network_timeout=30)
        inp = httpclient.InferInput("INPUT0", [1, 1], "FP32")
        inp.set_data_from_numpy(np.array([[700]], dtype=np.float32))
        try:
            result["value"] = client.infer("sleepy", [inp]).as_numpy("OUTPUT0")[0, 0]
        except InferenceServerException as exc:
            result["error"] = exc.message()
        client.close()

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.2)
    c.unload_model("sleepy")  # returns once the in-flight request has finished
    assert result.get("value") == 700, result
    t.join()
    assert not c.is_model_ready("sleepy")
