"""Tests of the TensorFlow backend class on small real models built with tensorflow in tmp_path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import naiad  # noqa: E402
import naiad.plugins  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from naiad.backend import InstanceContext  # noqa: E402
from naiad.config.model_config_pb2 import ModelConfig  # noqa: E402
from naiad_backend_tensorflow import DEFAULT_MAX_BATCH_SIZE, TensorFlowBackend  # noqa: E402
from naiad_tensorflow_models import (  # noqa: E402
    CONV_CONFIG,
    MLP,
    SIMPLE_STRING_CONFIG,
    ConvNet,
    SimpleString,
    build_mlp_graph,
    build_simple_string_graph,
    mlp_numpy,
    save,
    strings,
    write_graphdef,
)

CPU = InstanceContext("m_0", "KIND_CPU")


def config(text: str = "", platform: str = "tensorflow_savedmodel") -> ModelConfig:
    cfg = text_format.Parse(text, ModelConfig())
    cfg.name = cfg.name or "m"
    cfg.platform = cfg.platform or platform
    return cfg


def completed(version_path: Path, text: str = "", platform: str = "tensorflow_savedmodel"):
    cfg = config(text, platform)
    TensorFlowBackend.auto_complete_config(cfg, version_path)
    return cfg


def loaded(version_path: Path, cfg: ModelConfig, instance: InstanceContext = CPU):
    backend = TensorFlowBackend(cfg, version_path.parent, version_path, instance)
    backend.load()
    return backend


def tensors(section):
    return [
        (
            t.name,
            t.DESCRIPTOR.fields_by_name["data_type"].enum_type.values_by_number[t.data_type].name,
            list(t.dims),
        )
        for t in section
    ]


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory):
    module = MLP()
    return save(module, tmp_path_factory.mktemp("mlp") / "1", hidden=module.hidden)


# ---------------------------------------------------------------------------- plugin


def test_registry_finds_backend_through_entry_point():
    registry = naiad.plugins.build_backend_registry()
    for platform in ("tensorflow_savedmodel", "tensorflow_graphdef"):
        assert registry.find(platform, "") is TensorFlowBackend
    assert registry.find("", "tensorflow") is TensorFlowBackend
    (source,) = [src for name, _, src in registry.entries() if name == "tensorflow"]
    assert "naiad-backend-tensorflow" in source and "entry point" in source
    assert TensorFlowBackend.default_instance_count == 2


def test_import_does_not_import_tensorflow():
    code = (
        "import sys, naiad_backend_tensorflow, naiad_backend_tensorflow._signature; "
        "assert 'tensorflow' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- auto-complete


def test_autocomplete_savedmodel_signature(mlp_dir):
    cfg = completed(mlp_dir)
    assert cfg.max_batch_size == DEFAULT_MAX_BATCH_SIZE and cfg.HasField("dynamic_batching")
    assert tensors(cfg.input) == [("x", "TYPE_FP32", [8])]
    assert tensors(cfg.output) == [("y", "TYPE_FP32", [4])]


def test_autocomplete_named_signature_and_tag(mlp_dir):
    cfg = completed(
        mlp_dir, 'parameters { key: "TF_SIGNATURE_DEF" value { string_value: "hidden" } }'
    )
    assert tensors(cfg.output) == [("h", "TYPE_FP32", [32])]
    with pytest.raises(
        naiad.ModelLoadError,
        match=r"no signature 'nope' .*\['hidden', "
        r"'serving_default'\]",
    ):
        completed(mlp_dir, 'parameters { key: "TF_SIGNATURE_DEF" value { string_value: "nope" } }')
    with pytest.raises(naiad.ModelLoadError, match=r"no graph tagged 'gpu' .*\[\['serve'\]\]"):
        completed(mlp_dir, 'parameters { key: "TF_GRAPH_TAG" value { string_value: "gpu" } }')


def test_autocomplete_batching_hints(mlp_dir):
    # dims of the full rank mean "no batching": max_batch_size stays 0, no dynamic batching
    cfg = completed(mlp_dir, 'input [ { name: "x", data_type: TYPE_FP32, dims: [ -1, 8 ] } ]')
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert tensors(cfg.output) == [("y", "TYPE_FP32", [-1, 4])]
    contradicting = (
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ -1, 8 ] } ] '
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ] } ]'
    )
    with pytest.raises(naiad.ModelLoadError, match="contradict each other"):
        completed(mlp_dir, contradicting)
    kept = completed(mlp_dir, "max_batch_size: 16 sequence_batching { }")
    assert kept.max_batch_size == 16 and not kept.HasField("dynamic_batching")


def test_autocomplete_rejects_what_the_model_contradicts(tmp_path):
    fixed = tmp_path / "fixed" / "1"

    class Fixed(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([2, 3], tf.int32)])
        def __call__(self, a):
            return {"b": a * 2}

    save(Fixed(), fixed)
    cfg = completed(fixed)
    assert cfg.max_batch_size == 0 and tensors(cfg.input) == [("a", "TYPE_INT32", [2, 3])]
    with pytest.raises(naiad.ModelLoadError, match=r"max_batch_size is 8 .*\['a', 'b'\]"):
        completed(fixed, "max_batch_size: 8")
    with pytest.raises(
        naiad.ModelLoadError,
        match=r"input 'a' has data_type TYPE_FP32 in the "
        "configuration but the SavedModel model "
        "expects TYPE_INT32",
    ):
        completed(fixed, 'input [ { name: "a", data_type: TYPE_FP32, dims: [ 2, 3 ] } ]')
    with pytest.raises(naiad.ModelLoadError, match=r"'a' has shape \[2, 3\] .* gives \[2, 4\]"):
        completed(fixed, 'input [ { name: "a", data_type: TYPE_INT32, dims: [ 2, 4 ] } ]')
    with pytest.raises(
        naiad.ModelLoadError,
        match=r"output 'c' is not in the SavedModel "
        r"signature; its outputs are \['b'\]",
    ):
        completed(fixed, 'output [ { name: "c", data_type: TYPE_INT32, dims: [ 2, 3 ] } ]')


# ---------------------------------------------------------------------------- execute


def test_mlp_matches_tensorflow(mlp_dir):
    backend = loaded(mlp_dir, completed(mlp_dir))
    direct = tf.saved_model.load(str(mlp_dir / "model.savedmodel")).signatures["serving_default"]
    for batch in (1, 4):
        x = np.random.default_rng(batch).standard_normal((batch, 8)).astype(np.float32)
        y = backend.execute({"x": x}, ["y"])["y"]
        assert y.shape == (batch, 4) and y.dtype == np.float32
        np.testing.assert_allclose(y, direct(x=tf.constant(x))["y"].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y, mlp_numpy(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(naiad.InvalidArgument, match="tensorflow error in model 'm'"):
        backend.execute({"x": np.zeros((1, 7), np.float32)}, ["y"])
    backend.unload()


def test_conv_net_two_outputs(tmp_path):
    module = ConvNet()
    vp = save(module, tmp_path / "conv" / "1")
    cfg = completed(vp, CONV_CONFIG)
    backend = loaded(vp, cfg)
    image = np.random.default_rng(0).standard_normal((3, 16, 16, 3)).astype(np.float32)
    out = backend.execute({"image": image}, [])  # [] means every output
    want = module(tf.constant(image))
    np.testing.assert_allclose(out["logits"], want["logits"].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["features"], want["features"].numpy(), rtol=1e-4, atol=1e-4)
    assert list(backend.execute({"image": image}, ["features"])) == ["features"]


@pytest.mark.parametrize("platform", ["tensorflow_graphdef", "tensorflow_savedmodel"])
def test_simple_string(tmp_path, platform):
    vp = tmp_path / "simple_string" / "1"
    if platform == "tensorflow_graphdef":
        write_graphdef(vp, build_simple_string_graph)
    else:
        save(SimpleString(), vp)
    cfg = completed(vp, SIMPLE_STRING_CONFIG, platform)
    assert tensors(cfg.input) == [("INPUT0", "TYPE_STRING", [16]), ("INPUT1", "TYPE_STRING", [16])]
    backend = loaded(vp, cfg)
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), -3, dtype=np.int32)
    out = backend.execute({"INPUT0": strings(a), "INPUT1": strings(b)}, ["OUTPUT0", "OUTPUT1"])
    assert out["OUTPUT0"].dtype == object and isinstance(out["OUTPUT0"][0, 0], bytes)
    assert out["OUTPUT0"].tolist() == strings(a + b).tolist()
    assert out["OUTPUT1"].tolist() == strings(a - b).tolist()
    with pytest.raises(naiad.InvalidArgument, match="StringToNumber|convert"):
        bad = strings(a)
        bad[0, 0] = b"twelve"
        backend.execute({"INPUT0": bad, "INPUT1": strings(b)}, ["OUTPUT0"])


def test_graphdef_mlp_and_tensor_names(tmp_path):
    vp = write_graphdef(tmp_path / "g" / "1", build_mlp_graph)
    text = """max_batch_size: 8
        input [ { name: "x", data_type: TYPE_FP32, dims: [ 8 ] } ]
        output [ { name: "y:0", data_type: TYPE_FP32, dims: [ 4 ] } ]"""
    cfg = completed(vp, text, "tensorflow_graphdef")
    assert cfg == config(text, "tensorflow_graphdef")  # GraphDefs are not auto-completed
    x = np.random.default_rng(3).standard_normal((5, 8)).astype(np.float32)
    y = loaded(vp, cfg).execute({"x": x}, ["y:0"])["y:0"]
    np.testing.assert_allclose(y, mlp_numpy(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(
        naiad.ModelLoadError,
        match=r"input 'z' is not a tensor of the GraphDef; "
        r"its placeholders: \['x'\]",
    ):
        loaded(vp, config(text.replace('"x"', '"z"'), "tensorflow_graphdef"))
    with pytest.raises(naiad.ModelLoadError, match="must list inputs and outputs"):
        loaded(vp, config("max_batch_size: 8", "tensorflow_graphdef"))
    with pytest.raises(naiad.ModelLoadError, match="input 'x' has data_type TYPE_INT32"):
        loaded(
            vp,
            config(
                text.replace("TYPE_FP32, dims: [ 8 ]", "TYPE_INT32, dims: [ 8 ]"),
                "tensorflow_graphdef",
            ),
        )


# ---------------------------------------------------------------------------- sessions


def test_session_threads_and_gpu_memory_options(mlp_dir):
    cfg = completed(
        mlp_dir,
        """
        parameters { key: "TF_NUM_INTRA_THREADS" value { string_value: "2" } }
        parameters { key: "TF_NUM_INTER_THREADS" value { string_value: "1" } }
        parameters { key: "TF_USE_PER_SESSION_THREADS" value { string_value: "yes" } }""",
    )
    proto = loaded(mlp_dir, cfg)._session._config
    assert (proto.intra_op_parallelism_threads, proto.inter_op_parallelism_threads) == (2, 1)
    assert proto.use_per_session_threads and proto.device_count["GPU"] == 0
    assert proto.gpu_options.allow_growth  # never grab all GPU memory by default
    fixed = completed(
        mlp_dir, 'parameters { key: "TF_GPU_MEMORY_FRACTION" value { string_value: "0.25" } }'
    )
    proto = loaded(mlp_dir, fixed)._session._config
    assert proto.gpu_options.per_process_gpu_memory_fraction == 0.25
    assert not proto.gpu_options.allow_growth


@pytest.mark.parametrize(
    "key,value",
    [
        ("TF_NUM_INTRA_THREADS", "-1"),
        ("TF_GPU_MEMORY_FRACTION", "2"),
        ("TF_USE_PER_SESSION_THREADS", "perhaps"),
    ],
)
def test_bad_parameters(mlp_dir, key, value):
    cfg = completed(mlp_dir, f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}')
    with pytest.raises(naiad.ModelLoadError, match=key):
        loaded(mlp_dir, cfg)


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="checks the CPU fallback")
def test_gpu_instance_without_gpu_runs_on_cpu(mlp_dir, caplog):
    backend = loaded(mlp_dir, completed(mlp_dir), InstanceContext("m_0", "KIND_GPU", 0))
    assert "runs on the CPU" in caplog.text
    assert backend.execute({"x": np.ones((1, 8), np.float32)}, ["y"])["y"].shape == (1, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not tf.config.list_physical_devices("GPU"), reason="needs a TensorFlow GPU")
def test_gpu_instance(mlp_dir):
    backend = loaded(mlp_dir, completed(mlp_dir), InstanceContext("m_0", "KIND_GPU", 0))
    assert backend._session._config.gpu_options.allow_growth
    x = np.random.default_rng(4).standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_allclose(
        backend.execute({"x": x}, ["y"])["y"], mlp_numpy(x), rtol=1e-3, atol=1e-3
    )


# ---------------------------------------------------------------------------- broken files


def test_missing_and_corrupt_models(tmp_path):
    vp = tmp_path / "broken" / "1"
    vp.mkdir(parents=True)
    with pytest.raises(
        naiad.ModelLoadError,
        match=r"unable to find SavedModel folder .*"
        r"model\.savedmodel",
    ):
        completed(vp)
    (vp / "model.savedmodel").mkdir()
    with pytest.raises(naiad.ModelLoadError, match="has no saved_model.pb"):
        completed(vp)
    (vp / "model.savedmodel" / "saved_model.pb").write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(
        naiad.ModelLoadError, match=r"failed to read SavedModel .*model\.savedmodel"
    ):
        completed(vp)
    (vp / "model.graphdef").write_bytes(b"\x00garbage\xff" * 10)
    text = (
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ 8 ] } ] '
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ] } ]'
    )
    with pytest.raises(naiad.ModelLoadError, match=r"failed to load GraphDef .*model\.graphdef"):
        loaded(vp, config(text, "tensorflow_graphdef"))


def test_savedmodel_with_missing_variables(tmp_path, mlp_dir):
    import shutil

    vp = tmp_path / "novars" / "1"
    shutil.copytree(mlp_dir, vp)
    shutil.rmtree(vp / "model.savedmodel" / "variables")
    cfg = completed(vp)  # the signature alone is readable
    with pytest.raises(naiad.ModelLoadError, match=r"failed to load SavedModel"):
        loaded(vp, cfg)
