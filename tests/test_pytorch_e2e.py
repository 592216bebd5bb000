"""End to end: real PyTorch models served by the real server, called with tritonclient, compared
with torch called directly in this process."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("naiad_backend_pytorch")
import tritonclient.http as httpclient  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


def _models():
    path = ROOT / "plugins" / "backend-pytorch" / "tests" / "naiad_pytorch_models.py"
    spec = importlib.util.spec_from_file_location("naiad_pytorch_models_e2e", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


models = _models()


def _infer(client, model, name, array, outputs):
    inp = httpclient.InferInput(name, list(array.shape), "FP32")
    inp.set_data_from_numpy(array, binary_data=True)
    wanted = [httpclient.InferRequestedOutput(o, binary_data=True) for o in outputs]
    result = client.infer(model, [inp], outputs=wanted)
    return [result.as_numpy(o) for o in outputs]


def _direct(module, array):
    with torch.inference_mode():
        return module(torch.from_numpy(array))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server for this module (starting one with torch takes seconds)."""
    from conftest import start_server

    repo = models.write_repository(tmp_path_factory.mktemp("pytorch_repo"))
    # a broken model next to the good ones: it must be UNAVAILABLE, the rest READY
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.pt").write_bytes(b"not a torchscript archive")
    (repo / "broken" / "config.pbtxt").write_text(models.MLP_CONFIG)
    srv = start_server(repo, "--exit-on-error=false", log_dir=tmp_path_factory.mktemp("logs"))
    client = httpclient.InferenceServerClient(srv.url, concurrency=8)
    try:
        yield client
    finally:
        client.close()
        srv.stop()


def test_models_match_torch(served):
    client = served
    mlp, conv = models.mlp(), models.conv_net()
    for batch in (1, 4):  # mlp_export's auto-completed max_batch_size is 4
        x = np.random.default_rng(batch).standard_normal((batch, 16)).astype(np.float32)
        (y,) = _infer(client, "mlp", "INPUT__0", x, ["OUTPUT__0"])
        np.testing.assert_allclose(y, _direct(mlp, x).numpy(), rtol=1e-5, atol=1e-6)
        (y,) = _infer(client, "mlp_export", "x", x, ["OUTPUT__0"])
        np.testing.assert_allclose(y, _direct(mlp, x).numpy(), rtol=1e-5, atol=1e-6)
        image = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16)).astype(np.float32)
        logits, features = _infer(client, "conv", "image", image, ["logits__0", "features__1"])
        want_logits, want_features = _direct(conv, image)
        np.testing.assert_allclose(logits, want_logits.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(features, want_features.numpy(), rtol=1e-4, atol=1e-5)


def test_concurrent_requests_are_batched_correctly(served):
    client, mlp = served, models.mlp()
    xs = [
        np.random.default_rng(i).standard_normal((1 + i % 3, 16)).astype(np.float32)
        for i in range(24)
    ]
    pending = []
    for x in xs:  # the client's gevent pool keeps up to 8 requests in flight
        inp = httpclient.InferInput("INPUT__0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        pending.append(client.async_infer("mlp", [inp]))
    for x, request in zip(xs, pending, strict=True):
        y = request.get_result().as_numpy("OUTPUT__0")
        np.testing.assert_allclose(y, _direct(mlp, x).numpy(), rtol=1e-5, atol=1e-6)


def test_auto_completed_config_and_broken_model(served):
    client = served
    config = client.get_model_config("mlp_export")
    assert config["platform"] == "torch_aoti" and config["backend"] == "pytorch"
    assert config["max_batch_size"] == 4 and "dynamic_batching" in config
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("x", "TYPE_FP32", [16])
    ]
    metadata = client.get_model_metadata("conv")
    assert [o["name"] for o in metadata["outputs"]] == ["logits__0", "features__1"]
    index = {e["name"]: e for e in client.get_model_repository_index()}
    assert {n: index[n]["state"] for n in ("mlp", "conv", "mlp_export")} == dict.fromkeys(
        ("mlp", "conv", "mlp_export"), "READY"
    )
    assert index["broken"]["state"] == "UNAVAILABLE"
    assert "not a TorchScript or torch.export archive" in index["broken"]["reason"]
