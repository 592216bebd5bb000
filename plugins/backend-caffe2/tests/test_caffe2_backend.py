"""The caffe2 backend in-process: NetDef pairs built here, run through the backend class (the
converted ONNX graph in onnxruntime), compared with the source model; and what fails a load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
import naiad  # noqa: E402
import naiad_caffe2_models as models  # noqa: E402
from naiad.backend import InstanceContext  # noqa: E402
from naiad.config import parse_model_config  # noqa: E402
from naiad.plugins import build_backend_registry  # noqa: E402
from naiad_backend_caffe2 import Caffe2Backend  # noqa: E402
from naiad_backend_caffe2.caffe2_pb2 import Argument, NetDef, OperatorDef, TensorProto  # noqa: E402
from naiad_backend_caffe2.export import fill_op, write_pair  # noqa: E402

CPU = InstanceContext("m_0", "KIND_CPU")


def load(model_dir: Path, text: str | None = None, autocomplete: bool = False) -> Caffe2Backend:
    text = text if text is not None else (model_dir / "config.pbtxt").read_text()
    config = parse_model_config(text, model_name=model_dir.name)
    if autocomplete:
        Caffe2Backend.auto_complete_config(config, model_dir / "1")
    backend = Caffe2Backend(config, model_dir, model_dir / "1", CPU)
    backend.load()
    return backend


def run(backend: Caffe2Backend, x: np.ndarray, name: str = "data", out: str = "prob"):
    return backend.execute({name: x}, [out])[out]


def batch(*shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------- schema and plugin


def test_found_through_its_entry_point():
    registry = build_backend_registry()
    assert registry.find("caffe2_netdef", "") is Caffe2Backend
    assert registry.find("", "caffe2") is Caffe2Backend


def test_schema_uses_caffe2_field_numbers():
    """The numbers Caffe2's caffe2.proto gives these fields: files it wrote parse only so."""
    numbers = {
        NetDef: {"name": 1, "op": 2, "type": 3, "arg": 6, "external_input": 7,
                 "external_output": 8},
        OperatorDef: {"input": 1, "output": 2, "name": 3, "type": 4, "arg": 5,
                      "device_option": 6, "engine": 7},
        Argument: {"name": 1, "f": 2, "i": 3, "s": 4, "floats": 5, "ints": 6, "strings": 7,
                   "n": 8, "t": 10},
        TensorProto: {"dims": 1, "data_type": 2, "float_data": 3, "int32_data": 4,
                      "byte_data": 5, "name": 7, "int64_data": 10, "raw_data": 13},
    }  # fmt: skip
    for message, fields in numbers.items():
        got = {name: message.DESCRIPTOR.fields_by_name[name].number for name in fields}
        assert got == fields, message.DESCRIPTOR.name


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, encoded by hand (lengths < 128)."""
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_parses_bytes_written_by_hand_in_caffe2s_wire_format(tmp_path):
    """A Relu net and its (empty-weight) init net spelled out byte by byte."""
    relu = _field(1, b"x") + _field(2, b"y") + _field(4, b"Relu")  # OperatorDef
    predict = _field(1, b"hand") + _field(2, relu) + _field(7, b"x") + _field(8, b"y")
    shape = _field(1, b"shape") + bytes([6 << 3 | 0, 1])  # Argument name, ints: [1]
    values = _field(1, b"values") + bytes([5 << 3 | 5]) + np.float32(0).tobytes()
    fill = _field(2, b"c") + _field(4, b"GivenTensorFill") + _field(5, shape) + _field(5, values)
    (tmp_path / "hand" / "1").mkdir(parents=True)
    (tmp_path / "hand" / "1" / "model.netdef").write_bytes(predict)
    (tmp_path / "hand" / "1" / "init_model.netdef").write_bytes(_field(2, fill))
    text = models.config("hand", [("x", [3])], [("y", [3])])
    backend = load(tmp_path / "hand", text)
    x = np.array([[-1, 0, 2]], np.float32)
    np.testing.assert_array_equal(run(backend, x, "x", "y"), [[0, 0, 2]])


# ---------------------------------------------------------------------------- equal to the source


def test_mlp_from_pytorch_matches_torch(tmp_path):
    module = models.mlp()
    text = models.config("mlp", [("data", [16])], [("prob", [4])])
    models.write_model(tmp_path, "mlp", models.torch_pair(module, [16]), text)
    backend = load(tmp_path / "mlp")
    for n in (1, 5):
        x = batch(n, 16, seed=n)
        np.testing.assert_allclose(run(backend, x), models.run_torch(module, x), atol=1e-6)


def test_conv_net_from_onnx_matches_onnxruntime(tmp_path):
    source = models.conv_onnx()
    predict, init = models.onnx_pair(source)
    assert {o.type for o in predict.op} >= {
        "Conv",
        "SpatialBN",
        "Clip",
        "MaxPool",
        "Concat",
        "Dropout",
        "AveragePool",
        "FCTransposed",
        "Softmax",
        "Mul",
    }
    text = models.config("conv", [("data", [4, 20, 20])], [("prob", [5])])
    models.write_model(tmp_path, "conv", (predict, init), text)
    backend = load(tmp_path / "conv")
    x = batch(3, 4, 20, 20)
    np.testing.assert_allclose(run(backend, x), models.run_onnx(source, x), atol=1e-5)


def test_resnet_block_stack_from_pytorch_matches_torch(tmp_path):
    module = models.resnetish()
    predict, init = models.torch_pair(module, [3, 64, 64])
    types = [o.type for o in predict.op]
    assert types.count("SpatialBN") == 9 and "Sum" in types or "Add" in types
    text = models.config("resnet", [("data", [3, 64, 64])], [("prob", [10])])
    models.write_model(tmp_path, "resnet", (predict, init), text)
    backend = load(tmp_path / "resnet")
    x = batch(4, 3, 64, 64)
    np.testing.assert_allclose(run(backend, x), models.run_torch(module, x), atol=1e-5)


def test_zoo_style_net_matches_torch_functional(tmp_path):
    text = models.config("zoo", [("data", [3, 11, 13])], [("prob_out", [2, 2, 1])])
    models.write_model(tmp_path, "zoo", models.zoo_pair(), text)
    backend = load(tmp_path / "zoo")
    x = batch(2, 3, 11, 13)
    got = run(backend, x, out="prob_out")
    np.testing.assert_allclose(got, models.zoo_reference(x), atol=1e-5)
    assert np.allclose(got.reshape(2, -1).sum(1), 1.0, atol=1e-5)  # softmax over C*H*W


def test_the_other_operators_and_secondary_outputs(tmp_path):
    text = """name: "misc"
platform: "caffe2_netdef"
input [ { name: "data" data_type: TYPE_FP32 dims: [ 2, 4, 5, 6 ] } ]
output [ { name: "out" data_type: TYPE_FP64 dims: [ 2, 6 ] },
         { name: "split" data_type: TYPE_INT32 dims: [ 2 ] },
         { name: "old_shape" data_type: TYPE_INT64 dims: [ 1 ] } ]
"""
    models.write_model(tmp_path, "misc", models.misc_pair(), text)
    backend = load(tmp_path / "misc")
    x = batch(2, 4, 5, 6)
    got = backend.execute({"data": x}, ["out", "split", "old_shape"])
    np.testing.assert_allclose(got["out"], models.misc_reference(x), atol=1e-5)
    assert got["out"].dtype == np.float64
    np.testing.assert_array_equal(got["split"], np.array([3, 3], np.int32))
    np.testing.assert_array_equal(got["old_shape"], [2 * 4 * 6 * 9])  # padded H 6, W 9


def test_affine_channel_and_a_data_placeholder_in_the_init_net(tmp_path):
    """Detectron-style AffineChannel; and an init net that also fills the input blob (some
    Caffe2 init nets hold a placeholder for it): the request's tensor is what the net reads."""
    rng = np.random.default_rng(6)
    scale, bias = (
        rng.standard_normal(3).astype(np.float32),
        rng.standard_normal(3).astype(np.float32),
    )
    predict = NetDef(op=[models.op("AffineChannel", ["data", "s", "b"], ["y"])],
                     external_input=["data", "s", "b"], external_output=["y"])  # fmt: skip
    placeholder = models.op("ConstantFill", [], ["data"], shape=[1, 3, 4, 4], value=7.0)
    init = NetDef(op=[placeholder, fill_op("s", scale), fill_op("b", bias)])
    text = models.config("affine", [("data", [3, 4, 4])], [("y", [3, 4, 4])])
    models.write_model(tmp_path, "affine", (predict, init), text)
    x = batch(2, 3, 4, 4)
    want = x * scale.reshape(3, 1, 1) + bias.reshape(3, 1, 1)
    np.testing.assert_allclose(run(load(tmp_path / "affine"), x, out="y"), want, atol=1e-6)


def test_text_format_netdef_is_read_too(tmp_path):
    from google.protobuf import text_format

    predict, init = models.zoo_pair()
    models.write_model(tmp_path, "zoo", (predict, init), "")
    (tmp_path / "zoo" / "1" / "model.netdef").write_text(text_format.MessageToString(predict))
    text = models.config("zoo", [("data", [3, 11, 13])], [("prob_out", [2, 2, 1])])
    x = batch(1, 3, 11, 13)
    got = run(load(tmp_path / "zoo", text), x, out="prob_out")
    np.testing.assert_allclose(got, models.zoo_reference(x), atol=1e-5)


# ---------------------------------------------------------------------------- sessions


def test_the_onnx_backends_session_options_apply(tmp_path):
    """Threads and parameters come from naiad-backend-onnx's logic, not a copy of it."""
    extra = 'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
    text = models.config("zoo", [("data", [3, 11, 13])], [("prob_out", [2, 2, 1])], extra=extra)
    models.write_model(tmp_path, "zoo", models.zoo_pair(), text)
    backend = load(tmp_path / "zoo")
    assert backend.session.get_session_options().intra_op_num_threads == 1
    assert Caffe2Backend.default_instance_count == 1


def _cuda() -> bool:
    import onnxruntime

    # the CUDA wheel lists its provider with or without a GPU: look for the device too
    has_provider = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return has_provider and Path("/dev/nvidia0").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs onnxruntime with CUDA and a GPU")
def test_gpu_instance_runs_on_cuda(tmp_path):
    module = models.resnetish()
    text = models.config("resnet", [("data", [3, 64, 64])], [("prob", [10])])
    models.write_model(tmp_path, "resnet", models.torch_pair(module, [3, 64, 64]), text)
    config = parse_model_config(text, model_name="resnet")
    backend = Caffe2Backend(config, tmp_path / "resnet", tmp_path / "resnet" / "1",
                            InstanceContext("resnet_0", "KIND_GPU", 0))  # fmt: skip
    backend.load()
    assert backend.session.get_providers()[0] == "CUDAExecutionProvider"
    x = batch(4, 3, 64, 64)
    np.testing.assert_allclose(run(backend, x), models.run_torch(module, x), atol=1e-4)


# ---------------------------------------------------------------------------- auto-complete


def test_outputs_are_completed_from_external_output(tmp_path):
    models.write_model(tmp_path, "zoo", models.zoo_pair(), "")
    config = parse_model_config(models.config("zoo", [("data", [3, 11, 13])], []), model_name="zoo")
    Caffe2Backend.auto_complete_config(config, tmp_path / "zoo" / "1")
    assert [(o.name, list(o.dims)) for o in config.output] == [("prob_out", [2, 2, 1])]
    assert config.output[0].data_type == config.input[0].data_type  # TYPE_FP32


def test_inputs_cannot_be_guessed(tmp_path):
    models.write_model(tmp_path, "zoo", models.zoo_pair(), "")
    config = parse_model_config('platform: "caffe2_netdef"', model_name="zoo")
    with pytest.raises(naiad.ModelLoadError, match=r"records no input.*\['data'\]"):
        Caffe2Backend.auto_complete_config(config, tmp_path / "zoo" / "1")


def test_a_config_that_contradicts_the_net_fails(tmp_path):
    models.write_model(tmp_path, "zoo", models.zoo_pair(), "")
    wrong = models.config("zoo", [("data", [3, 11, 13])], [("prob_out", [4])])
    with pytest.raises(naiad.ModelLoadError, match=r"'prob_out' has shape \[-1, 2, 2, 1\]"):
        load(tmp_path / "zoo", wrong)
    typo = models.config("zoo", [("dat", [3, 11, 13])], [("prob_out", [2, 2, 1])])
    with pytest.raises(naiad.ModelLoadError, match=r"input 'dat' is not a blob.*\['data'\]"):
        load(tmp_path / "zoo", typo)


# ---------------------------------------------------------------------------- failures


def test_an_unsupported_operator_is_named(tmp_path):
    text = models.config("bad", [("data", [4])], [("q", [4])])
    models.write_model(tmp_path, "bad", models.unsupported_pair(), text)
    with pytest.raises(
        naiad.ModelLoadError,
        match=r"operator 1 'Int8Quantize' \(q\) is not "
        r"supported.*supported operators: .*Conv",
    ):
        load(tmp_path / "bad")


@pytest.mark.parametrize("which", ["model.netdef", "init_model.netdef"])
def test_a_truncated_file_fails_with_a_reason(tmp_path, which):
    text = models.config("zoo", [("data", [3, 11, 13])], [("prob_out", [2, 2, 1])])
    models.write_model(tmp_path, "zoo", models.zoo_pair(), text)
    path = tmp_path / "zoo" / "1" / which
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2 + 1])
    with pytest.raises(naiad.ModelLoadError, match=rf"{which}.*truncated or corrupt"):
        load(tmp_path / "zoo")


def test_foreign_bytes_and_a_missing_init_net_fail_with_a_reason(tmp_path):
    text = models.config("zoo", [("data", [3, 11, 13])], [("prob_out", [2, 2, 1])])
    models.write_model(tmp_path, "zoo", models.zoo_pair(), text)
    version = tmp_path / "zoo" / "1"
    (version / "init_model.netdef").unlink()
    with pytest.raises(naiad.ModelLoadError, match=r"unable to find .*init_model\.netdef"):
        load(tmp_path / "zoo")
    (version / "model.netdef").write_bytes(b"\xff\x00 this is not a protobuf \x12")
    with pytest.raises(naiad.ModelLoadError, match=r"not a Caffe2 NetDef"):
        load(tmp_path / "zoo")


def test_training_mode_operators_are_refused(tmp_path):
    predict, init = models.zoo_pair()
    for a in predict.op[1].arg:
        if a.name == "is_test":
            a.i = 0
    text = models.config("zoo", [("data", [3, 11, 13])], [("prob_out", [2, 2, 1])])
    models.write_model(tmp_path, "zoo", (predict, init), text)
    with pytest.raises(naiad.ModelLoadError, match=r"'SpatialBN'.*is_test: 0"):
        load(tmp_path / "zoo")


def test_a_missing_weight_is_named(tmp_path):
    predict, init = models.zoo_pair()
    del init.op[0]  # conv1_w
    text = models.config("zoo", [("data", [3, 11, 13])], [("prob_out", [2, 2, 1])])
    models.write_model(tmp_path, "zoo", (predict, init), text)
    with pytest.raises(naiad.ModelLoadError, match=r"'Conv'.*input blob 'conv1_w' is neither"):
        load(tmp_path / "zoo")


# ---------------------------------------------------------------------------- the export tool


def test_export_command_writes_a_pair_that_serves(tmp_path):
    import onnx

    source = models.conv_onnx()
    onnx.save(source, str(tmp_path / "conv.onnx"))
    out = tmp_path / "repo" / "conv" / "1"
    done = subprocess.run(
        [sys.executable, "-m", "naiad_backend_caffe2.export", str(tmp_path / "conv.onnx"),
         str(out)], capture_output=True, text=True, check=True)  # fmt: skip
    assert "inputs: ['data']  outputs: ['prob']" in done.stdout
    text = models.config("conv", [("data", [4, 20, 20])], [("prob", [5])])
    x = batch(2, 4, 20, 20)
    got = run(load(tmp_path / "repo" / "conv", text), x)
    np.testing.assert_allclose(got, models.run_onnx(source, x), atol=1e-5)


def test_export_command_takes_torchscript(tmp_path):
    module = models.mlp()
    with pytest.warns(DeprecationWarning):  # torch.jit is deprecated in favour of torch.export
        torch.jit.save(torch.jit.trace(module, torch.zeros(2, 16)), str(tmp_path / "mlp.pt"))
    out = tmp_path / "repo" / "mlp" / "1"
    subprocess.run(
        [sys.executable, "-m", "naiad_backend_caffe2.export", str(tmp_path / "mlp.pt"), str(out),
         "--input-shape", "16", "--input-name", "x", "--output-name", "y"],
        capture_output=True, text=True, check=True)  # fmt: skip
    text = models.config("mlp", [("x", [16])], [("y", [4])])
    x = batch(3, 16)
    got = run(load(tmp_path / "repo" / "mlp", text), x, "x", "y")
    np.testing.assert_allclose(got, models.run_torch(module, x), atol=1e-6)


def test_export_refuses_what_caffe2_cannot_express(tmp_path):
    import onnx
    from onnx import TensorProto as T
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Erf", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", T.FLOAT, [1])],
        [helper.make_tensor_value_info("y", T.FLOAT, [1])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(tmp_path / "erf.onnx"))
    done = subprocess.run(
        [sys.executable, "-m", "naiad_backend_caffe2.export", str(tmp_path / "erf.onnx"),
         str(tmp_path / "out")], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1
    assert "ONNX operator 'Erf'" in done.stderr
    assert not (tmp_path / "out").exists()


def test_write_pair_is_deterministic(tmp_path):
    nets = models.zoo_pair()
    a = write_pair(*nets, tmp_path / "a")
    b = write_pair(*nets, tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
