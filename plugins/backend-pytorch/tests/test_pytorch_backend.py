"""Tests of the PyTorch backend class on small real models built with torch in tmp_path."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import naiad  # noqa: E402
import naiad.plugins  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from naiad.backend import InstanceContext  # noqa: E402
from naiad.config.model_config_pb2 import ModelConfig  # noqa: E402
from naiad_backend_pytorch import DEFAULT_MAX_BATCH_SIZE, PyTorchBackend  # noqa: E402
from naiad_backend_pytorch._binding import bind_inputs, bind_outputs, named_index  # noqa: E402
from naiad_pytorch_models import (  # noqa: E402
    CONV_CONFIG,
    MLP_CONFIG,
    TwoInputs,
    conv_net,
    mlp,
    quiet_jit,
    save_exported,
    save_torchscript,
)

CPU = InstanceContext("m_0", "KIND_CPU")
# torch >= 2.10 deprecates TorchScript; loading a TorchScript model warns, which is expected here
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


def config(text: str = "", name: str = "m") -> ModelConfig:
    cfg = text_format.Parse(text, ModelConfig())
    cfg.name = cfg.name or name
    if not cfg.platform:
        cfg.platform = "pytorch_libtorch"
    return cfg


def loaded(version_path: Path, cfg: ModelConfig, instance: InstanceContext = CPU):
    PyTorchBackend.auto_complete_config(cfg, version_path)
    backend = PyTorchBackend(cfg, version_path.parent, version_path, instance)
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


def direct(module, *args):
    with torch.inference_mode():
        out = module(*(torch.from_numpy(a) for a in args))
    return out


@pytest.fixture(autouse=True)
def _restore_threads():
    """load() sets this thread's intra-op threads; put the default back for other tests."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------- plugin


def test_registry_finds_backend_through_entry_point():
    registry = naiad.plugins.build_backend_registry()
    for platform in ("pytorch_libtorch", "libtorch", "torch_aoti"):
        assert registry.find(platform, "") is PyTorchBackend
    assert registry.find("", "pytorch") is PyTorchBackend
    (source,) = [src for name, _, src in registry.entries() if name == "pytorch"]
    assert "naiad-backend-pytorch" in source and "entry point" in source


def test_import_and_discovery_do_not_import_torch():
    code = (
        "import sys, naiad, naiad.plugins, naiad_backend_pytorch; "
        "naiad.plugins.build_backend_registry(); "
        "bad = [m for m in ('torch', 'tensorflow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_named_index_and_binding_rules():
    assert named_index("INPUT__0") == 0 and named_index("out__12") == 12
    assert named_index("INPUT") is None and named_index("a__b__1") is None
    assert bind_inputs("m", ["y", "x"], ["x", "y"]).positions == {"y": 1, "x": 0}
    indexed = bind_inputs("m", ["B__1", "A__0"], ["x", "y"])
    assert indexed.convention == "named index" and indexed.positions == {"B__1": 1, "A__0": 0}
    assert bind_inputs("m", ["a", "b"], ["x", "y"]).convention == "config order"
    assert bind_inputs("m", ["d"], ["inputs"], dict_input=True).is_dict
    with pytest.raises(
        naiad.ModelLoadError, match=r"gives 1 inputs \['x'\] but forward\(\) takes 2"
    ):
        bind_inputs("m", ["x"], ["x", "y"])
    with pytest.raises(naiad.ModelLoadError, match="must be 0..1"):
        bind_inputs("m", ["A__0", "B__2"], ["x", "y"])
    assert bind_outputs("m", ["b__1", "a__0"]) == {"b__1": 1, "a__0": 0}
    assert bind_outputs("m", ["logits", "features"]) == {"logits": 0, "features": 1}


# ---------------------------------------------------------------------------- execute


def test_mlp_torchscript_matches_torch(tmp_path):
    module = mlp()
    vp = save_torchscript(module, torch.randn(2, 16), tmp_path / "mlp" / "1")
    backend = loaded(vp, config(MLP_CONFIG))
    for batch in (1, 7, 32):
        x = np.random.default_rng(batch).standard_normal((batch, 16)).astype(np.float32)
        y = backend.execute({"INPUT__0": x}, ["OUTPUT__0"])["OUTPUT__0"]
        assert y.shape == (batch, 4) and y.dtype == np.float32
        np.testing.assert_allclose(y, direct(module, x).numpy(), rtol=1e-5, atol=1e-6)
        assert not y.flags.owndata  # a view of the output tensor, not a copy
    backend.unload()


def test_conv_net_tuple_outputs_by_index(tmp_path):
    module = conv_net()
    vp = save_torchscript(module, torch.randn(2, 3, 16, 16), tmp_path / "conv" / "1")
    backend = loaded(vp, config(CONV_CONFIG))
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    out = backend.execute({"image": x}, ["logits__0", "features__1"])
    logits, features = direct(module, x)
    np.testing.assert_allclose(out["logits__0"], logits.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["features__1"], features.numpy(), rtol=1e-4, atol=1e-5)
    assert list(backend.execute({"image": x}, ["features__1"])) == ["features__1"]


def test_read_only_request_buffers_are_used_without_copy_or_warning(tmp_path):
    vp = save_torchscript(mlp(), torch.randn(2, 16), tmp_path / "mlp" / "1")
    backend = loaded(vp, config(MLP_CONFIG))
    x = np.frombuffer(np.ones((2, 16), np.float32).tobytes(), np.float32).reshape(2, 16)
    assert not x.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = backend.execute({"INPUT__0": x}, [])["OUTPUT__0"]  # [] means every output
    np.testing.assert_allclose(y, direct(mlp(), x.copy()).numpy(), rtol=1e-5, atol=1e-6)


FORWARD_ARGS = """max_batch_size: 8
    input [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ] },
            { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]
    output [ { name: "diff", data_type: TYPE_FP32, dims: [ 4 ] },
             { name: "sum", data_type: TYPE_FP32, dims: [ 4 ] } ]"""


def test_inputs_by_forward_argument_name_and_dict_outputs(tmp_path):
    vp = save_torchscript(TwoInputs(), None, tmp_path / "two" / "1", script=True)
    backend = loaded(vp, config(FORWARD_ARGS))
    assert backend._binding.convention == "forward argument"
    x, y = np.ones((2, 4), np.float32), np.full((2, 4), 3, np.float32)
    out = backend.execute({"y": y, "x": x}, ["sum", "diff"])
    np.testing.assert_array_equal(out["sum"], x + 2 * y)
    np.testing.assert_array_equal(out["diff"], x - y)


def test_config_order_fallback_logs_a_warning(tmp_path, caplog):
    vp = save_torchscript(TwoInputs(), None, tmp_path / "two" / "1", script=True)
    text = FORWARD_ARGS.replace('"y"', '"first"').replace('"x"', '"second"')
    with caplog.at_level(logging.WARNING):
        backend = loaded(vp, config(text))
    assert "configuration order" in caplog.text
    a, b = np.ones((1, 4), np.float32), np.full((1, 4), 2, np.float32)
    out = backend.execute({"first": a, "second": b}, ["sum"])  # first -> x, second -> y
    np.testing.assert_array_equal(out["sum"], a + 2 * b)


def test_dict_input_and_string_lists(tmp_path):
    class DictIn(torch.nn.Module):
        def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return inputs["a"] * inputs["b"]

    class Upper(torch.nn.Module):
        def forward(self, words: list[str]) -> list[str]:
            return [w.upper() for w in words]

    vp = save_torchscript(DictIn(), None, tmp_path / "dict" / "1", script=True)
    backend = loaded(
        vp,
        config("""max_batch_size: 4
        input [ { name: "a", data_type: TYPE_INT64, dims: [ 2 ] },
                { name: "b", data_type: TYPE_INT64, dims: [ 2 ] } ]
        output [ { name: "OUTPUT__0", data_type: TYPE_INT64, dims: [ 2 ] } ]"""),
    )
    a = np.array([[2, 3]], np.int64)
    assert backend.execute({"a": a, "b": a}, [])["OUTPUT__0"].tolist() == [[4, 9]]

    vp = save_torchscript(Upper(), None, tmp_path / "upper" / "1", script=True)
    backend = loaded(
        vp,
        config("""max_batch_size: 8
        input [ { name: "words", data_type: TYPE_STRING, dims: [ 1 ], reshape { shape: [ ] } } ]
        output [ { name: "OUTPUT__0", data_type: TYPE_STRING, dims: [ 1 ],
                   reshape { shape: [ ] } } ]"""),
    )
    words = np.array([b"naive", "na\u00efve".encode()], dtype=object)
    out = backend.execute({"words": words}, ["OUTPUT__0"])["OUTPUT__0"]
    assert out.dtype == object and out.tolist() == [
        b"NAIVE",
        "NA\u00efVE".encode(),
    ]  # ASCII upper()
    with pytest.raises(naiad.InvalidArgument, match="UTF-8"):
        backend.execute({"words": np.array([b"\xff"], dtype=object)}, [])


def test_execute_errors(tmp_path):
    vp = save_torchscript(mlp(), torch.randn(2, 16), tmp_path / "mlp" / "1")
    backend = loaded(vp, config(MLP_CONFIG))
    with pytest.raises(naiad.InternalError, match="PyTorch execute failure in model 'm'"):
        backend.execute({"INPUT__0": np.zeros((2, 15), np.float32)}, [])
    wrong = config(MLP_CONFIG.replace("TYPE_FP32, dims: [ 4 ]", "TYPE_FP64, dims: [ 4 ]"))
    with pytest.raises(
        naiad.InternalError,
        match="expects datatype TYPE_FP64 for output 'OUTPUT__0'.*torch.float32",
    ):
        loaded(vp, wrong).execute({"INPUT__0": np.zeros((1, 16), np.float32)}, [])
    extra = config(
        MLP_CONFIG.replace(
            "dims: [ 4 ] } ]",
            'dims: [ 4 ] }, { name: "OUTPUT__1", data_type: TYPE_FP32, dims: [ 4 ] } ]',
        )
    )
    with pytest.raises(naiad.InternalError, match="index 1, but the model returned a single"):
        loaded(vp, extra).execute({"INPUT__0": np.zeros((1, 16), np.float32)}, ["OUTPUT__1"])


# ---------------------------------------------------------------------------- parameters, devices


def test_thread_and_mode_parameters(tmp_path):
    vp = save_torchscript(mlp(), torch.randn(2, 16), tmp_path / "mlp" / "1")
    interop = torch.get_num_interop_threads()
    cfg = config(
        MLP_CONFIG
        + f"""
        parameters {{ key: "INTRA_OP_THREAD_COUNT" value {{ string_value: "1" }} }}
        parameters {{ key: "INTER_OP_THREAD_COUNT" value {{ string_value: "{interop}" }} }}
        parameters {{ key: "INFERENCE_MODE" value {{ string_value: "false" }} }}
        parameters {{ key: "DISABLE_OPTIMIZED_EXECUTION" value {{ string_value: "true" }} }}"""
    )
    backend = loaded(vp, cfg)
    assert torch.get_num_threads() == 1  # load() runs on the instance's thread: this one here
    torch.set_num_threads(2)
    x = np.ones((1, 16), np.float32)
    np.testing.assert_allclose(
        backend.execute({"INPUT__0": x}, [])["OUTPUT__0"],
        direct(mlp(), x).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    assert torch.get_num_threads() == 1  # execute() puts the instance's count back
    assert backend._grad_mode is torch.no_grad and not backend._optimized


def test_default_threads_split_cpus_between_instances(tmp_path):
    vp = save_torchscript(mlp(), torch.randn(2, 16), tmp_path / "mlp" / "1")
    backend = loaded(vp, config(MLP_CONFIG.replace("count: 1", "count: 2")))
    assert backend._threads == backend.cpu_share() == max(1, len(os_cpus()) // 2)


def os_cpus():
    import os

    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count())


@pytest.mark.parametrize(
    "key,value",
    [
        ("INTRA_OP_THREAD_COUNT", "0"),
        ("INTER_OP_THREAD_COUNT", "many"),
        ("INFERENCE_MODE", "maybe"),
    ],
)
def test_bad_parameters(tmp_path, key, value):
    vp = save_torchscript(mlp(), torch.randn(2, 16), tmp_path / "mlp" / "1")
    cfg = config(MLP_CONFIG + f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}')
    with pytest.raises(naiad.ModelLoadError, match=key):
        loaded(vp, cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback without CUDA")
def test_gpu_instance_without_cuda_runs_on_cpu(tmp_path, caplog):
    vp = save_torchscript(mlp(), torch.randn(2, 16), tmp_path / "mlp" / "1")
    backend = loaded(vp, config(MLP_CONFIG), InstanceContext("m_0", "KIND_GPU", 0))
    assert backend._device == "cpu" and "runs on the CPU" in caplog.text
    assert backend.execute({"INPUT__0": np.ones((1, 16), np.float32)}, [])["OUTPUT__0"].shape == (
        1,
        4,
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("pinned", [True, False])
def test_gpu_instance(tmp_path, pinned):
    module = conv_net()
    vp = save_torchscript(module, torch.randn(2, 3, 16, 16), tmp_path / "conv" / "1")
    text = CONV_CONFIG + (
        ""
        if pinned
        else "optimization { input_pinned_memory { enable: false }"
        " output_pinned_memory { enable: false } }"
    )
    backend = loaded(vp, config(text), InstanceContext("m_0", "KIND_GPU", 0))
    assert backend._device == "cuda:0"
    assert next(backend._model.call.parameters()).device.type == "cuda"
    x = np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)
    out = backend.execute({"image": x}, ["logits__0", "features__1"])
    logits, features = direct(module, x)
    assert isinstance(out["logits__0"], np.ndarray)
    np.testing.assert_allclose(out["logits__0"], logits.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(out["features__1"], features.numpy(), rtol=1e-3, atol=1e-4)
    backend.unload()


# ---------------------------------------------------------------------------- torch.export


def test_exported_program_auto_complete_and_execute(tmp_path):
    module = mlp()
    vp = save_exported(module, (torch.randn(2, 16),), tmp_path / "mlp" / "1")
    cfg = config('platform: "torch_aoti"')
    PyTorchBackend.auto_complete_config(cfg, vp)
    assert cfg.max_batch_size == DEFAULT_MAX_BATCH_SIZE and cfg.HasField("dynamic_batching")
    assert tensors(cfg.input) == [("x", "TYPE_FP32", [16])]
    assert tensors(cfg.output) == [("OUTPUT__0", "TYPE_FP32", [4])]
    backend = loaded(vp, cfg)
    x = np.random.default_rng(5).standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_allclose(
        backend.execute({"x": x}, [])["OUTPUT__0"], direct(module, x).numpy(), rtol=1e-5, atol=1e-6
    )


def test_exported_dict_outputs_and_fixed_shapes(tmp_path):
    vp = save_exported(
        TwoInputs(), (torch.randn(2, 4), torch.randn(2, 4)), tmp_path / "t" / "1", batch=False
    )
    cfg = config('backend: "pytorch" default_model_filename: "model.pt2"')
    cfg.ClearField("platform")
    cfg.platform = "torch_aoti"
    PyTorchBackend.auto_complete_config(cfg, vp)
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert tensors(cfg.input) == [("x", "TYPE_FP32", [2, 4]), ("y", "TYPE_FP32", [2, 4])]
    assert tensors(cfg.output) == [("sum", "TYPE_FP32", [2, 4]), ("diff", "TYPE_FP32", [2, 4])]
    out = loaded(vp, cfg).execute(
        {"x": np.ones((2, 4), np.float32), "y": np.ones((2, 4), np.float32)}, ["diff"]
    )
    assert out["diff"].tolist() == [[0.0] * 4] * 2
    with pytest.raises(naiad.ModelLoadError, match=r"max_batch_size is 8 .*\['x', 'y', 'sum'"):
        PyTorchBackend.auto_complete_config(config('platform: "torch_aoti" max_batch_size: 8'), vp)


def test_exported_program_config_checks(tmp_path):
    vp = save_exported(mlp(), (torch.randn(2, 16),), tmp_path / "mlp" / "1")
    named = config("""platform: "torch_aoti" max_batch_size: 8
        input [ { name: "INPUT__0" } ] output [ { name: "OUTPUT__0" } ]""")
    PyTorchBackend.auto_complete_config(named, vp)  # fills what the entries leave out
    assert tensors(named.input) == [("INPUT__0", "TYPE_FP32", [16])]
    assert not named.HasField("dynamic_batching")  # inputs and outputs were given
    bad_type = 'input [ { name: "x", data_type: TYPE_INT32, dims: [ 16 ] } ]'
    with pytest.raises(
        naiad.ModelLoadError,
        match=r"input 'x' has data_type TYPE_INT32 .*"
        r"PyTorch \(torch.export\) model expects "
        "TYPE_FP32",
    ):
        PyTorchBackend.auto_complete_config(
            config('platform: "torch_aoti" max_batch_size: 8 ' + bad_type), vp
        )
    bad_shape = config(
        'platform: "torch_aoti" max_batch_size: 8 input [ { name: "x", '
        'data_type: TYPE_FP32, dims: [ 15 ] } ] output [ { name: "OUTPUT__0", '
        "data_type: TYPE_FP32, dims: [ 4 ] } ]"
    )
    backend = PyTorchBackend(bad_shape, vp.parent, vp, CPU)
    with pytest.raises(naiad.ModelLoadError, match=r"'x' has shape \[-1, 16\] .* gives \[-1, 15\]"):
        backend.load()  # load() checks too, for servers that run with auto-complete off


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="AOTInductor needs a C++ compiler",
)
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_aoti_package(tmp_path):
    module = mlp()
    vp = tmp_path / "aoti" / "1"
    vp.mkdir(parents=True)
    program = torch.export.export(
        module, (torch.randn(2, 16),), dynamic_shapes=({0: torch.export.Dim("batch", max=64)},)
    )
    torch._inductor.aoti_compile_and_package(program, package_path=str(vp / "model.pt2"))
    cfg = config(MLP_CONFIG.replace("pytorch_libtorch", "torch_aoti"))
    PyTorchBackend.auto_complete_config(cfg, vp)  # no signature in the package: nothing filled
    backend = loaded(vp, cfg)
    x = np.random.default_rng(2).standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_allclose(
        backend.execute({"INPUT__0": x}, [])["OUTPUT__0"],
        direct(module, x).numpy(),
        rtol=1e-4,
        atol=1e-5,
    )


# ---------------------------------------------------------------------------- broken files


def test_missing_and_corrupt_files(tmp_path):
    vp = tmp_path / "broken" / "1"
    vp.mkdir(parents=True)
    with pytest.raises(
        naiad.ModelLoadError, match=r"unable to find PyTorch model file .*model\.pt"
    ):
        loaded(vp, config(MLP_CONFIG))
    (vp / "model.pt").write_bytes(b"definitely not a zip archive")
    with pytest.raises(
        naiad.ModelLoadError,
        match=r"model\.pt' is not a TorchScript or "
        "torch.export archive",
    ):
        loaded(vp, config(MLP_CONFIG))


def test_file_kind_must_match_platform(tmp_path):
    vp = save_torchscript(mlp(), torch.randn(2, 16), tmp_path / "m" / "1", filename="model.pt2")
    with pytest.raises(
        naiad.ModelLoadError,
        match=r"'model.pt2' holds a TorchScript module, but "
        "platform 'torch_aoti'",
    ):
        loaded(vp, config(MLP_CONFIG.replace("pytorch_libtorch", "torch_aoti")))
    vp = save_exported(mlp(), (torch.randn(2, 16),), tmp_path / "e" / "1", filename="model.pt")
    with pytest.raises(
        naiad.ModelLoadError,
        match=r"'model.pt' holds a torch.export program, "
        "but platform 'pytorch_libtorch'",
    ):
        loaded(vp, config(MLP_CONFIG))


def test_config_that_does_not_fit_the_model(tmp_path):
    vp = save_torchscript(TwoInputs(), None, tmp_path / "two" / "1", script=True)
    one_input = (
        'max_batch_size: 8 input [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ] } ] '
        'output [ { name: "sum", data_type: TYPE_FP32, dims: [ 4 ] } ]'
    )
    with pytest.raises(
        naiad.ModelLoadError,
        match=r"gives 1 inputs \['y'\] but forward\(\) "
        r"takes 2 \['x', 'y'\]",
    ):
        loaded(vp, config(one_input))
    strings = FORWARD_ARGS.replace('"x", data_type: TYPE_FP32', '"x", data_type: TYPE_STRING')
    with pytest.raises(
        naiad.ModelLoadError, match="input 'x' is TYPE_STRING in the configuration but forward"
    ):
        loaded(vp, config(strings))
    with pytest.raises(naiad.ModelLoadError, match="at least one input"):
        loaded(vp, config("max_batch_size: 1"))


def test_quiet_jit_hides_torchscript_deprecation():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet_jit(torch.jit.trace, mlp(), torch.randn(1, 16))
