"""End to end: real TensorFlow models served by the real server, called with tritonclient,
compared with tensorflow called directly in this process."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("naiad_backend_tensorflow")
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _models():
    path = ROOT / "plugins" / "backend-tensorflow" / "tests" / "naiad_tensorflow_models.py"
    spec = importlib.util.spec_from_file_location("naiad_tensorflow_models_e2e", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


models = _models()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server for this module (starting one with tensorflow takes seconds)."""
    from conftest import start_server

    repo = models.write_repository(tmp_path_factory.mktemp("tensorflow_repo"))
    (repo / "broken" / "1" / "model.savedmodel").mkdir(parents=True)
    (repo / "broken" / "1" / "model.savedmodel" / "saved_model.pb").write_bytes(b"\xffnot a pb")
    srv = start_server(repo, "--exit-on-error=false", log_dir=tmp_path_factory.mktemp("logs"))
    client = httpclient.InferenceServerClient(srv.url)
    try:
        yield client
    finally:
        client.close()
        srv.stop()


def _input(name, array, datatype):
    inp = httpclient.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array, binary_data=True)
    return inp


def test_mlp_and_conv_match_tensorflow(served):
    client = served
    conv = models.ConvNet()
    for batch in (1, 4):
        x = np.random.default_rng(batch).standard_normal((batch, 8)).astype(np.float32)
        result = client.infer("mlp", [_input("x", x, "FP32")])
        np.testing.assert_allclose(result.as_numpy("y"), models.mlp_numpy(x), rtol=1e-5, atol=1e-5)
        image = np.random.default_rng(batch).standard_normal((batch, 16, 16, 3)).astype(np.float32)
        result = client.infer("conv", [_input("image", image, "FP32")])
        want = conv(tf.constant(image))
        for name in ("logits", "features"):
            np.testing.assert_allclose(
                result.as_numpy(name), want[name].numpy(), rtol=1e-4, atol=1e-4
            )


@pytest.mark.parametrize("model", ["simple_string", "simple_string_savedmodel"])
@pytest.mark.parametrize("binary", [True, False])
def test_simple_string(served, model, binary):
    client = served
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 7, dtype=np.int32)
    inputs = [
        httpclient.InferInput("INPUT0", [1, 16], "BYTES"),
        httpclient.InferInput("INPUT1", [1, 16], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(models.strings(a), binary_data=binary)
    inputs[1].set_data_from_numpy(models.strings(b), binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")
    ]
    result = client.infer(model, inputs, outputs=outputs)
    direct = models.simple_string(tf.constant(models.strings(a)), tf.constant(models.strings(b)))
    assert _bytes(result.as_numpy("OUTPUT0")) == direct["OUTPUT0"].numpy().tolist()
    assert _bytes(result.as_numpy("OUTPUT1")) == models.strings(a - b).tolist()


def _bytes(array):
    """tritonclient gives JSON string outputs as str, binary ones as bytes."""
    return [[v.encode() if isinstance(v, str) else v for v in row] for row in array.tolist()]


def test_bad_string_is_a_client_error(served):
    bad = models.strings(np.zeros((1, 16), np.int32))
    bad[0, 3] = b"three"
    inputs = [
        httpclient.InferInput("INPUT0", [1, 16], "BYTES"),
        httpclient.InferInput("INPUT1", [1, 16], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(bad)
    inputs[1].set_data_from_numpy(models.strings(np.zeros((1, 16), np.int32)))
    with pytest.raises(InferenceServerException, match="three") as info:
        served.infer("simple_string", inputs)
    assert info.value.status() == "400"


def test_auto_complete_and_broken_model(served):
    client = served
    config = client.get_model_config("mlp")
    assert config["platform"] == "tensorflow_savedmodel" and config["max_batch_size"] == 4
    assert "dynamic_batching" in config
    assert [(i["name"], i["data_type"]) for i in config["input"]] == [("x", "TYPE_FP32")]
    assert [g["count"] for g in config["instance_group"]] == [2]  # Triton's default for TF
    index = {e["name"]: e for e in client.get_model_repository_index()}
    assert index["broken"]["state"] == "UNAVAILABLE"
    assert "failed to read SavedModel" in index["broken"]["reason"]
    for name in ("mlp", "conv", "simple_string", "simple_string_savedmodel"):
        assert index[name]["state"] == "READY", index[name]
