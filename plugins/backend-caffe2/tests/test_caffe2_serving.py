"""Caffe2 NetDef models served by the real server and called with tritonclient (HTTP): equal to
their source models, batched, the example ensemble answering a JPEG with a classification, and
broken models UNAVAILABLE with a reason while every other model serves."""

from __future__ import annotations

import importlib.util
import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
PIL = pytest.importorskip("PIL")
import naiad_caffe2_models as models  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from PIL import Image  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "caffe2_ensemble_model_repository"


def _by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


server_fixtures = _by_path("naiad_tests_conftest_caffe2", ROOT / "tests" / "conftest.py")
make_example = _by_path("naiad_make_caffe2_ensemble", ROOT / "examples" / "make_caffe2_ensemble.py")

ZOO_CONFIG = models.config("zoo_netdef", [("data", [3, 11, 13])], [("prob_out", [2, 2, 1])])


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("caffe2_repo")
    dyn = "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"
    models.write_model(
        repo,
        "mlp_netdef",
        models.torch_pair(models.mlp(), [16]),
        models.config("mlp_netdef", [("data", [16])], [("prob", [4])], extra=dyn),
    )
    models.write_model(
        repo,
        "conv_netdef",
        models.onnx_pair(models.conv_onnx()),
        models.config("conv_netdef", [("data", [4, 20, 20])], [("prob", [5])]),
    )
    models.write_model(
        repo,
        "resnet_netdef",
        models.torch_pair(models.resnetish(), [3, 64, 64]),
        models.config("resnet_netdef", [("data", [3, 64, 64])], [("prob", [10])], extra=dyn),
    )
    # no output in the config: completed from the net's external_output
    models.write_model(
        repo,
        "zoo_netdef",
        models.zoo_pair(),
        models.config("zoo_netdef", [("data", [3, 11, 13])], []),
    )
    models.write_model(
        repo,
        "unsupported_netdef",
        models.unsupported_pair(),
        models.config("unsupported_netdef", [("data", [4])], [("q", [4])]),
    )
    for name, damage in (("truncated_netdef", "truncate"), ("corrupt_netdef", "corrupt")):
        models.write_model(repo, name, models.zoo_pair(), ZOO_CONFIG.replace("zoo_netdef", name))
        path = repo / name / "1" / ("model.netdef" if damage == "truncate" else "init_model.netdef")
        data = path.read_bytes()
        path.write_bytes(
            data[: len(data) * 2 // 3] if damage == "truncate" else b"\x0b" + bytes(range(256)) * 4
        )
    for name in (make_example.PREPROCESS, make_example.CLASSIFIER, make_example.ENSEMBLE):
        shutil.copytree(EXAMPLE / name, repo / name)
    return repo  # fmt: skip


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    srv = server_fixtures.start_server(
        repo, "--exit-on-error=false", log_dir=tmp_path_factory.mktemp("logs"))  # fmt: skip
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(server.url, concurrency=8)
    try:
        yield c
    finally:
        c.close()


def infer(client, model: str, x: np.ndarray, name: str = "data", out: str = "prob"):
    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = client.infer(model, [inp], outputs=[httpclient.InferRequestedOutput(out)])
    return result.as_numpy(out)


def batch(*shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------- served, equal


def test_mlp_conv_and_resnet_answer_like_their_sources(client):
    x = batch(3, 16)
    np.testing.assert_allclose(
        infer(client, "mlp_netdef", x), models.run_torch(models.mlp(), x), atol=1e-6
    )
    x = batch(2, 4, 20, 20)
    np.testing.assert_allclose(
        infer(client, "conv_netdef", x), models.run_onnx(models.conv_onnx(), x), atol=1e-5
    )
    x = batch(2, 3, 64, 64)
    np.testing.assert_allclose(
        infer(client, "resnet_netdef", x), models.run_torch(models.resnetish(), x), atol=1e-5
    )
    x = batch(1, 3, 11, 13)
    np.testing.assert_allclose(infer(client, "zoo_netdef", x, out="prob_out"),
                               models.zoo_reference(x), atol=1e-5)  # fmt: skip


def test_concurrent_requests_through_dynamic_batching_each_get_their_answer(client):
    module = models.resnetish()
    xs = [batch(1, 3, 64, 64, seed=i) for i in range(12)]
    pending = []
    for x in xs:  # async_infer: the client's own pool of 8 connections
        inp = httpclient.InferInput("data", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        pending.append(client.async_infer("resnet_netdef", [inp]))
    got = [p.get_result().as_numpy("prob") for p in pending]
    for x, y in zip(xs, got, strict=True):
        np.testing.assert_allclose(y, models.run_torch(module, x), atol=1e-5)


def test_metadata_and_completed_config(client):
    meta = client.get_model_metadata("resnet_netdef")
    assert meta["platform"] == "caffe2_netdef"
    assert meta["inputs"] == [{"name": "data", "datatype": "FP32", "shape": [-1, 3, 64, 64]}]
    config = client.get_model_config("zoo_netdef")
    assert config["backend"] == "caffe2"
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("prob_out", "TYPE_FP32", [2, 2, 1])]  # fmt: skip


def test_wrong_input_shape_is_a_400_and_the_model_keeps_serving(client):
    with pytest.raises(InferenceServerException) as info:
        infer(client, "conv_netdef", batch(1, 4, 20, 21))
    assert info.value.status() == "400"
    assert infer(client, "conv_netdef", batch(1, 4, 20, 20)).shape == (1, 5)


# ---------------------------------------------------------------------------- broken models


def _states(client) -> dict[str, dict]:
    return {m["name"]: m for m in client.get_model_repository_index()}


def test_an_unsupported_operator_makes_the_model_unavailable_naming_it(client):
    state = _states(client)["unsupported_netdef"]
    assert state["state"] == "UNAVAILABLE"
    assert "'Int8Quantize'" in state["reason"] and "not supported" in state["reason"]
    assert not client.is_model_ready("unsupported_netdef")


@pytest.mark.parametrize(
    ("model", "file"),
    [("truncated_netdef", "model.netdef"), ("corrupt_netdef", "init_model.netdef")],
)
def test_a_damaged_netdef_is_unavailable_with_a_reason_while_others_serve(client, model, file):
    state = _states(client)[model]
    assert state["state"] == "UNAVAILABLE"
    assert file in state["reason"] and "not a Caffe2 NetDef" in state["reason"]
    with pytest.raises(InferenceServerException):
        infer(client, model, batch(1, 3, 11, 13), out="prob_out")
    x = batch(1, 3, 11, 13)
    np.testing.assert_allclose(infer(client, "zoo_netdef", x, out="prob_out"),
                               models.zoo_reference(x), atol=1e-5)  # fmt: skip


# ---------------------------------------------------------------------------- the example


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _pictures() -> list[bytes]:
    yy, xx = np.mgrid[0:240, 0:320]
    gradient = np.stack([xx * 255 / 320, yy * 255 / 240, (xx + yy) * 0.45], -1).astype(np.uint8)
    checker = (((xx // 16 + yy // 16) % 2) * 255).astype(np.uint8)
    return [_jpeg(gradient), _jpeg(np.dstack([checker] * 3))]


def _onnx_classifier_by_hand(blobs: list[bytes]) -> np.ndarray:
    """Pillow preprocessing, then the ONNX twin of the NetDef classifier (same weights)."""
    import onnxruntime as ort

    images = []
    for blob in blobs:
        image = Image.open(io.BytesIO(blob)).convert("RGB").resize(
            (224, 224), Image.Resampling.BILINEAR)  # fmt: skip
        x = np.asarray(image).astype(np.float32)
        images.append((x * np.float32(1 / 128) - np.float32(1)).transpose(2, 0, 1))
    onnx_model = ROOT / "examples" / "ensemble_model_repository" / "resnet_tiny_onnx" / "1"
    session = ort.InferenceSession(
        str(onnx_model / "model.onnx"), providers=["CPUExecutionProvider"])  # fmt: skip
    return session.run(None, {"data": np.stack(images)})[0]


def test_example_ensemble_classifies_jpeg_bytes(client):
    """ensemble_image_client.py's request: BYTES INPUT [batch, 1], OUTPUT as top-k classes."""
    blobs = _pictures()
    data = np.array(blobs, dtype=object).reshape(len(blobs), 1)
    inp = httpclient.InferInput("INPUT", [len(blobs), 1], "BYTES")
    inp.set_data_from_numpy(data)
    out = httpclient.InferRequestedOutput("OUTPUT", class_count=3)
    result = client.infer(make_example.ENSEMBLE, [inp], outputs=[out]).as_numpy("OUTPUT")
    expected = _onnx_classifier_by_hand(blobs)
    labels = make_example.make_ensemble.labels()
    assert result.shape == (len(blobs), 3)
    for row, want in zip(result, expected, strict=True):
        order = np.argsort(-want)[:3]
        for entry, index in zip(row, order, strict=True):
            value, got_index, label = entry.decode().split(":", 2)
            assert (int(got_index), label) == (index, labels[index])
            assert float(value) == pytest.approx(float(want[index]), rel=1e-4, abs=1e-6)


def test_committed_example_repository_is_up_to_date(tmp_path):
    make_example.write_all(tmp_path)
    for path in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        rel = path.relative_to(tmp_path)
        assert (EXAMPLE / rel).read_bytes() == path.read_bytes(), f"regenerate {rel}"


def test_netdef_models_and_the_example_ensemble_over_grpc(server):
    """The same answers through tritonclient.grpc: a NetDef classifier and the JPEG ensemble."""
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        x = batch(2, 3, 64, 64, seed=7)
        inp = grpcclient.InferInput("data", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = c.infer("resnet_netdef", [inp]).as_numpy("prob")
        np.testing.assert_allclose(got, models.run_torch(models.resnetish(), x), atol=1e-5)
        blobs = _pictures()
        data = np.array(blobs, dtype=object).reshape(len(blobs), 1)
        image = grpcclient.InferInput("INPUT", [len(blobs), 1], "BYTES")
        image.set_data_from_numpy(data)
        out = grpcclient.InferRequestedOutput("OUTPUT", class_count=1)
        result = c.infer(make_example.ENSEMBLE, [image], outputs=[out]).as_numpy("OUTPUT")
        expected = _onnx_classifier_by_hand(blobs)
        for row, want in zip(result, expected, strict=True):
            assert int(row[0].decode().split(":")[1]) == int(np.argmax(want))
    finally:
        c.close()
