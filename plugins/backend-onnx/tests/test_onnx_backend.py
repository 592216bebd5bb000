"""Tests of the ONNX Runtime backend class, on small models built with onnx.helper."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
import naiad  # noqa: E402
import naiad.plugins  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from naiad.backend import InstanceContext  # noqa: E402
from naiad.config.model_config_pb2 import ModelConfig  # noqa: E402
from naiad_backend_onnx import DEFAULT_MAX_BATCH_SIZE, OnnxBackend  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[3]
CPU = InstanceContext("m_0", "KIND_CPU")


# ---------------------------------------------------------------------------- model builders


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def save_model(model_dir: Path, nodes, inputs, outputs, initializers=(), version="1") -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (model_dir / version).mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(model_dir / version / "model.onnx"))
    return model_dir / version


def simple_model(tmp_path, batch="batch"):
    """INT32 INPUT0, INPUT1 [batch, 16] -> OUTPUT0 = sum, OUTPUT1 = difference."""
    shape = [batch, 16]
    return save_model(
        tmp_path / "simple",
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        [_vi("INPUT0", TensorProto.INT32, shape), _vi("INPUT1", TensorProto.INT32, shape)],
        [_vi("OUTPUT0", TensorProto.INT32, shape), _vi("OUTPUT1", TensorProto.INT32, shape)],
    )


def identity_model(tmp_path, name, elem, shape):
    return save_model(
        tmp_path / name,
        [helper.make_node("Identity", ["x"], ["y"])],
        [_vi("x", elem, shape)],
        [_vi("y", elem, shape)],
    )


def bool_model(tmp_path):
    """BOOL a, b [batch, 4] -> and = a AND b, not_a = NOT a."""
    shape = ["batch", 4]
    return save_model(
        tmp_path / "logic",
        [helper.make_node("And", ["a", "b"], ["and"]), helper.make_node("Not", ["a"], ["not_a"])],
        [_vi("a", TensorProto.BOOL, shape), _vi("b", TensorProto.BOOL, shape)],
        [_vi("and", TensorProto.BOOL, shape), _vi("not_a", TensorProto.BOOL, shape)],
    )


MLP_RNG = np.random.default_rng(42)
W1, B1, W2, B2 = (
    MLP_RNG.standard_normal(shape).astype(np.float32) for shape in ((8, 32), (32,), (32, 4), (4,))
)


def mlp_model(tmp_path):
    """FP32 input [batch, 8] -> 32 relu -> output [batch, 4]."""
    inits = [
        numpy_helper.from_array(a, n) for a, n in ((W1, "W1"), (B1, "B1"), (W2, "W2"), (B2, "B2"))
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "B1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["h3"]),
        helper.make_node("Add", ["h3", "B2"], ["output"]),
    ]
    return save_model(
        tmp_path / "mlp",
        nodes,
        [_vi("input", TensorProto.FLOAT, ["batch", 8])],
        [_vi("output", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )


def mlp_numpy(x):
    return np.maximum(x @ W1 + B1, 0) @ W2 + B2


# ---------------------------------------------------------------------------- helpers


def config(text: str = "", name: str = "m") -> ModelConfig:
    cfg = text_format.Parse(text, ModelConfig())
    cfg.name = cfg.name or name
    return cfg


def completed(version_path: Path, text: str = "") -> ModelConfig:
    cfg = config(text)
    OnnxBackend.auto_complete_config(cfg, version_path)
    return cfg


def loaded(version_path: Path, cfg: ModelConfig, instance: InstanceContext = CPU) -> OnnxBackend:
    backend = OnnxBackend(cfg, version_path.parent, version_path, instance)
    backend.load()
    return backend


def tensors(section):
    """[(name, TYPE_* name, dims)] of a config's input or output list."""
    return [
        (
            t.name,
            t.DESCRIPTOR.fields_by_name["data_type"].enum_type.values_by_number[t.data_type].name,
            list(t.dims),
        )
        for t in section
    ]


def obj(items, shape=None):
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape) if shape else out


# ---------------------------------------------------------------------------- plugin discovery


def test_registry_finds_backend_through_entry_point():
    registry = naiad.plugins.build_backend_registry()
    assert registry.find("onnxruntime_onnx", "") is OnnxBackend
    assert registry.find("", "onnxruntime") is OnnxBackend
    (source,) = [src for name, _, src in registry.entries() if name == "onnxruntime"]
    assert "naiad-backend-onnx" in source and "entry point" in source


def test_import_does_not_import_frameworks():
    code = (
        "import sys, naiad_backend_onnx; "
        "assert 'onnxruntime' not in sys.modules and 'onnx' not in sys.modules, sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_class_attributes():
    assert OnnxBackend.name == "onnxruntime"
    assert OnnxBackend.platforms == ("onnxruntime_onnx",)
    assert OnnxBackend.default_model_filename == "model.onnx"
    assert OnnxBackend.default_instance_count == 2


# ---------------------------------------------------------------------------- execute


def test_simple_add_sub(tmp_path):
    vp = simple_model(tmp_path)
    backend = loaded(vp, completed(vp))
    a = np.arange(48, dtype=np.int32).reshape(3, 16)
    b = np.full((3, 16), 5, dtype=np.int32)
    out = backend.execute({"INPUT0": a, "INPUT1": b}, ["OUTPUT0", "OUTPUT1"])
    np.testing.assert_array_equal(out["OUTPUT0"], a + b)
    np.testing.assert_array_equal(out["OUTPUT1"], a - b)
    only = backend.execute({"INPUT0": a, "INPUT1": b}, ["OUTPUT1"])
    assert list(only) == ["OUTPUT1"]
    # a wider integer type is converted, not rejected
    out = backend.execute({"INPUT0": a.astype(np.int64), "INPUT1": b}, ["OUTPUT0"])
    assert out["OUTPUT0"].dtype == np.int32
    backend.unload()


def test_fp16_identity(tmp_path):
    vp = identity_model(tmp_path, "half", TensorProto.FLOAT16, ["batch", 3])
    cfg = completed(vp)
    assert tensors(cfg.input) == [("x", "TYPE_FP16", [3])]
    backend = loaded(vp, cfg)
    x = np.array([[0.5, -2.0, 65504.0]], dtype=np.float16)
    y = backend.execute({"x": x}, ["y"])["y"]
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, x)


def test_bool_model(tmp_path):
    vp = bool_model(tmp_path)
    cfg = completed(vp)
    assert tensors(cfg.output) == [("and", "TYPE_BOOL", [4]), ("not_a", "TYPE_BOOL", [4])]
    backend = loaded(vp, cfg)
    a = np.array([[True, True, False, False]])
    b = np.array([[True, False, True, False]])
    out = backend.execute({"a": a, "b": b}, ["and", "not_a"])
    np.testing.assert_array_equal(out["and"], a & b)
    np.testing.assert_array_equal(out["not_a"], ~a)
    assert out["and"].dtype == np.bool_


def test_string_identity_bytes_in_bytes_out(tmp_path):
    vp = identity_model(tmp_path, "text", TensorProto.STRING, ["batch", "n"])
    cfg = completed(vp)
    assert tensors(cfg.input) == [("x", "TYPE_STRING", [-1])]
    backend = loaded(vp, cfg)
    x = obj([b"hello", "naïve".encode(), b"", b"a b"], (2, 2))
    y = backend.execute({"x": x}, ["y"])["y"]
    assert y.dtype == object and y.shape == (2, 2)
    assert all(isinstance(v, bytes) for v in y.reshape(-1))
    assert y.tolist() == x.tolist()
    with pytest.raises(naiad.InvalidArgument, match="UTF-8"):
        backend.execute({"x": obj([b"\xff\xfe"], (1, 1))}, ["y"])


@pytest.mark.parametrize(
    "items",
    [
        [b"abcdefgh", b"x", b""] * 1000,
        ["naïve €".encode(), b"plain", "\U0001f600".encode()] * 1000,
        [b"ends in NUL\x00", b"\x00", b"ok"] * 1000,
        [b"a" * 100_000] + [b"b"] * 3000,
        [b"no NUL", "naïve\x00".encode()] * 1000,
    ],
    ids=["ascii", "unicode", "trailing NUL", "one long string", "unicode NUL"],
)
def test_large_string_tensors_round_trip(tmp_path, items):
    """Tensors large enough to be converted in chunks (as fixed-width unicode where it pays,
    as str objects where it does not or cannot hold them) come back byte for byte."""
    vp = identity_model(tmp_path, "text", TensorProto.STRING, ["batch", "n"])
    backend = loaded(vp, completed(vp))
    x = obj(items, (1, len(items)))
    y = backend.execute({"x": x}, ["y"])["y"]
    assert y.dtype == object and y.shape == x.shape
    assert y.tolist() == x.tolist()
    with pytest.raises(naiad.InvalidArgument, match="UTF-8"):
        backend.execute({"x": obj(items[:-1] + [b"\xff"], (1, len(items)))}, ["y"])


def test_mlp_variable_batch(tmp_path):
    vp = mlp_model(tmp_path)
    backend = loaded(vp, completed(vp))
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 8)).astype(np.float32)
        y = backend.execute({"input": x}, ["output"])["output"]
        assert y.shape == (batch, 4)
        np.testing.assert_allclose(y, mlp_numpy(x), rtol=1e-5, atol=1e-5)


def test_runtime_error_becomes_naiad_error(tmp_path):
    vp = mlp_model(tmp_path)
    backend = loaded(vp, completed(vp))
    with pytest.raises(naiad.InvalidArgument, match="onnx runtime error"):
        backend.execute({"input": np.zeros((2, 7), np.float32)}, ["output"])


def test_scalar_input_without_batching(tmp_path):
    vp = identity_model(tmp_path, "scalar", TensorProto.FLOAT, [])
    cfg = completed(vp)
    assert cfg.max_batch_size == 0
    assert tensors(cfg.input) == [("x", "TYPE_FP32", [1])]
    assert not cfg.input[0].HasField("reshape")
    backend = loaded(vp, cfg)
    y = backend.execute({"x": np.array([2.5], np.float32)}, ["y"])["y"]
    assert y.shape == (1,) and y[0] == 2.5


def test_gpu_instance_runs_even_without_cuda(tmp_path, caplog):
    vp = simple_model(tmp_path)
    backend = loaded(vp, completed(vp), InstanceContext("m_0", "KIND_GPU", 0))
    a = np.ones((1, 16), np.int32)
    assert (backend.execute({"INPUT0": a, "INPUT1": a}, ["OUTPUT0"])["OUTPUT0"] == 2).all()
    if "CUDAExecutionProvider" not in backend.session.get_providers():
        assert "runs on the CPU" in caplog.text


# ---------------------------------------------------------------------------- session options


def test_thread_defaults_split_cpus_between_instances(tmp_path):
    vp = simple_model(tmp_path)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cfg = completed(vp, "instance_group [ { kind: KIND_CPU, count: 2 } ]")
    backend = loaded(vp, cfg)
    assert backend.session.get_session_options().intra_op_num_threads == max(1, cpus // 2)


def test_thread_parameters(tmp_path):
    vp = simple_model(tmp_path)
    cfg = completed(
        vp,
        """
        parameters { key: "intra_op_thread_count" value { string_value: "3" } }
        parameters { key: "inter_op_thread_count" value { string_value: "2" } }
        parameters { key: "execution_mode" value { string_value: "1" } }
        optimization { graph { level: 1 } }""",
    )
    opts = loaded(vp, cfg).session.get_session_options()
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 2
    assert str(opts.execution_mode).endswith("ORT_PARALLEL")
    assert str(opts.graph_optimization_level).endswith("ORT_ENABLE_EXTENDED")


@pytest.mark.parametrize("key,value", [("execution_mode", "2"), ("intra_op_thread_count", "many")])
def test_bad_parameters(tmp_path, key, value):
    vp = simple_model(tmp_path)
    cfg = completed(vp, f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}')
    with pytest.raises(naiad.ModelLoadError, match=key):
        loaded(vp, cfg)


# ---------------------------------------------------------------------------- auto-complete


def test_autocomplete_batching_model(tmp_path):
    cfg = completed(mlp_model(tmp_path))
    assert cfg.max_batch_size == DEFAULT_MAX_BATCH_SIZE == 4
    assert cfg.HasField("dynamic_batching")
    assert tensors(cfg.input) == [("input", "TYPE_FP32", [8])]
    assert tensors(cfg.output) == [("output", "TYPE_FP32", [4])]


def test_autocomplete_fixed_first_dim_means_no_batching(tmp_path):
    cfg = completed(identity_model(tmp_path, "fixed", TensorProto.FLOAT, [2, "n", 3]))
    assert cfg.max_batch_size == 0
    assert not cfg.HasField("dynamic_batching")
    assert tensors(cfg.input) == [("x", "TYPE_FP32", [2, -1, 3])]


def test_autocomplete_keeps_scheduler_and_max_batch_size(tmp_path):
    cfg = completed(mlp_model(tmp_path), "max_batch_size: 16 sequence_batching { }")
    assert cfg.max_batch_size == 16
    assert not cfg.HasField("dynamic_batching")
    assert tensors(cfg.input) == [("input", "TYPE_FP32", [8])]


def test_autocomplete_max_batch_size_contradiction(tmp_path):
    vp = simple_model(tmp_path, batch=1)
    with pytest.raises(naiad.ModelLoadError, match="max_batch_size"):
        completed(vp, "max_batch_size: 8")
    # a complete config has nothing to fill (no session is opened for it): load() checks it
    full = REPO_ROOT / "examples" / "model_repository" / "simple" / "config.pbtxt"
    cfg = text_format.Parse(full.read_text(), ModelConfig())
    before = cfg.SerializeToString()
    OnnxBackend.auto_complete_config(cfg, vp)
    assert cfg.SerializeToString() == before
    with pytest.raises(naiad.ModelLoadError, match=r"max_batch_size is 8 .*'INPUT0'.*\[1, 16\]"):
        loaded(vp, cfg)  # without auto-complete, load() validates too


def test_autocomplete_datatype_mismatch(tmp_path):
    vp = simple_model(tmp_path)
    text = 'max_batch_size: 8 input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 16 ] } ]'
    with pytest.raises(naiad.ModelLoadError, match=r"'INPUT0'.*TYPE_FP32.*TYPE_INT32"):
        completed(vp, text)


def test_autocomplete_fills_missing_tensors_only(tmp_path):
    vp = simple_model(tmp_path)
    cfg = completed(
        vp, 'max_batch_size: 8 input [ { name: "INPUT1", data_type: TYPE_INT32, dims: [ 16 ] } ]'
    )
    assert [t.name for t in cfg.input] == ["INPUT1", "INPUT0"]
    assert tensors(cfg.output) == [("OUTPUT0", "TYPE_INT32", [16]), ("OUTPUT1", "TYPE_INT32", [16])]
    assert cfg.max_batch_size == 8 and cfg.HasField("dynamic_batching")  # as Triton does


def test_autocomplete_leaves_complete_config_alone(tmp_path):
    vp = simple_model(tmp_path)
    text = """max_batch_size: 8
        input [ { name: "INPUT0", data_type: TYPE_INT32, dims: [ 16 ] },
                { name: "INPUT1", data_type: TYPE_INT32, dims: [ 16 ] } ]
        output [ { name: "OUTPUT1", data_type: TYPE_INT32, dims: [ 16 ] } ]"""
    cfg = completed(vp, text)
    assert cfg == config(text)  # an output subset is allowed; no dynamic_batching invented
    backend = loaded(vp, cfg)
    a = np.ones((2, 16), np.int32)
    assert (backend.execute({"INPUT0": a, "INPUT1": a}, ["OUTPUT1"])["OUTPUT1"] == 0).all()


@pytest.mark.parametrize(
    "text,match",
    [
        ('input [ { name: "INPUTX", data_type: TYPE_INT32, dims: [ -1, 16 ] } ]', "INPUTX"),
        (
            'input [ { name: "INPUT0", data_type: TYPE_INT32, dims: [ -1, 15 ] } ]',
            r"'INPUT0'.*shape",
        ),
        ('input [ { name: "INPUT0", data_type: TYPE_INT32, dims: [ 16 ] } ]', r"'INPUT0'.*shape"),
    ],
)
def test_autocomplete_rejects_wrong_tensors(tmp_path, text, match):
    with pytest.raises(naiad.ModelLoadError, match=match):
        completed(simple_model(tmp_path), text)


def sequence_model(tmp_path):
    """Like Triton's simple_sequence: OUTPUT = READY * (INPUT + START), all INT32 [batch, 1]."""
    ios = [_vi(n, TensorProto.INT32, ["batch", 1]) for n in ("INPUT", "START", "READY", "OUTPUT")]
    return save_model(
        tmp_path / "seq",
        [
            helper.make_node("Add", ["INPUT", "START"], ["s"]),
            helper.make_node("Mul", ["READY", "s"], ["OUTPUT"]),
        ],
        ios[:3],
        ios[3:],
    )


SEQUENCE = """max_batch_size: 8
    sequence_batching { control_input [
      { name: "START", control [ { kind: CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] } ] },
      { name: "READY", control [ { kind: CONTROL_SEQUENCE_READY, int32_false_true: [ 0, 1 ] } ] }
    ] }"""


def test_sequence_controls_are_not_config_inputs(tmp_path):
    vp = sequence_model(tmp_path)
    cfg = completed(vp, SEQUENCE)
    assert tensors(cfg.input) == [("INPUT", "TYPE_INT32", [1])]
    assert tensors(cfg.output) == [("OUTPUT", "TYPE_INT32", [1])]
    assert not cfg.HasField("dynamic_batching")
    one = np.ones((2, 1), np.int32)
    out = loaded(vp, cfg).execute({"INPUT": one * 5, "START": one, "READY": one}, ["OUTPUT"])
    assert (out["OUTPUT"] == 6).all()
    cfg.ClearField("sequence_batching")  # now nothing would feed START and READY
    with pytest.raises(naiad.ModelLoadError, match=r"\['READY', 'START'\] are missing"):
        loaded(vp, cfg)
    assert [t.name for t in completed(vp, "max_batch_size: 8").input] == ["INPUT", "START", "READY"]


# ---------------------------------------------------------------------------- model files


def test_corrupt_file(tmp_path):
    vp = tmp_path / "broken" / "1"
    vp.mkdir(parents=True)
    (vp / "model.onnx").write_bytes(b"this is not a protobuf")
    with pytest.raises(naiad.ModelLoadError, match=r"model\.onnx"):
        completed(vp)
    cfg = config('input [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]')
    with pytest.raises(naiad.ModelLoadError, match=r"failed to load ONNX model file .*model\.onnx"):
        loaded(vp, cfg)


def test_missing_file(tmp_path):
    vp = tmp_path / "empty" / "1"
    vp.mkdir(parents=True)
    with pytest.raises(naiad.ModelLoadError, match=r"unable to find .*model\.onnx"):
        completed(vp)


def test_model_directory_and_default_model_filename(tmp_path):
    vp = simple_model(tmp_path)
    (vp / "model.onnx").rename(vp / "inner.onnx")
    (vp / "model.onnx").mkdir()
    (vp / "inner.onnx").rename(vp / "model.onnx" / "model.onnx")
    assert completed(vp).max_batch_size == 4  # folder model.onnx/ holding model.onnx
    (vp / "model.onnx" / "model.onnx").rename(vp / "custom.onnx")
    cfg = completed(vp, 'default_model_filename: "custom.onnx"')
    assert (
        loaded(vp, cfg)
        .execute(
            {"INPUT0": np.ones((1, 16), np.int32), "INPUT1": np.ones((1, 16), np.int32)},
            ["OUTPUT0"],
        )["OUTPUT0"]
        .sum()
        == 32
    )


# ---------------------------------------------------------------------------- example repository


def _example_module():
    path = REPO_ROOT / "examples" / "make_models.py"
    spec = importlib.util.spec_from_file_location("naiad_example_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_repository(tmp_path):
    examples = _example_module()
    examples.write_all(tmp_path)
    backends = {}
    for name in ("simple", "simple_string", "simple_identity", "mlp"):
        cfg = text_format.Parse((tmp_path / name / "config.pbtxt").read_text(), ModelConfig())
        before = ModelConfig()
        before.CopyFrom(cfg)
        OnnxBackend.auto_complete_config(cfg, tmp_path / name / "1")
        assert cfg == before, name  # the written configs are complete and match the models
        backends[name] = loaded(tmp_path / name / "1", cfg)

    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    out = backends["simple"].execute({"INPUT0": a, "INPUT1": b}, ["OUTPUT0", "OUTPUT1"])
    assert (out["OUTPUT0"] == a + b).all() and (out["OUTPUT1"] == a - b).all()

    as_bytes = lambda x: obj([str(v).encode() for v in x.reshape(-1)], x.shape)  # noqa: E731
    out = backends["simple_string"].execute(
        {"INPUT0": as_bytes(a), "INPUT1": as_bytes(b)}, ["OUTPUT0", "OUTPUT1"]
    )
    assert out["OUTPUT0"].tolist() == as_bytes(a + b).tolist()
    assert out["OUTPUT1"].tolist() == as_bytes(a - b).tolist()

    words = obj([b"one", b"two", b"\xe2\x82\xac"], (1, 3))
    assert (
        backends["simple_identity"].execute({"INPUT0": words}, ["OUTPUT0"])["OUTPUT0"].tolist()
        == words.tolist()
    )

    x = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    y = backends["mlp"].execute({"input": x}, ["output"])["output"]
    np.testing.assert_allclose(y, examples.mlp_numpy(x), rtol=1e-5, atol=1e-5)


def test_committed_example_repository_is_up_to_date(tmp_path):
    _example_module().write_all(tmp_path)
    committed = REPO_ROOT / "examples" / "model_repository"
    for path in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        rel = path.relative_to(tmp_path)
        assert (committed / rel).read_bytes() == path.read_bytes(), f"regenerate {rel}"


def test_mlp_matches_anchor_reference():
    anchors = REPO_ROOT.parent / "shared" / "anchors" / "models" / "make_mlp.py"
    if not anchors.exists():
        pytest.skip("anchors not present")
    spec = importlib.util.spec_from_file_location("anchor_make_mlp", anchors)
    anchor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anchor)
    x = np.random.default_rng(9).standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_array_equal(_example_module().mlp_numpy(x), anchor.reference_mlp(x))
