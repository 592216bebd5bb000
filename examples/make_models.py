#!/usr/bin/env python3
"""(Re)write naiad's example model repository: Triton's example models, as ONNX files.

    simple           INT32 INPUT0, INPUT1 [16] -> OUTPUT0 = INPUT0 + INPUT1,
                                                 OUTPUT1 = INPUT0 - INPUT1
    simple_string    the same arithmetic on BYTES tensors holding decimal numbers ("12", "-3")
                     (ONNX: Cast string -> int32, Add / Sub, Cast int32 -> string)
    simple_identity  BYTES INPUT0 [-1] -> OUTPUT0, an echo
    mlp              FP32 input [16] -> MatMul 16x64 + b1 -> Relu -> MatMul 64x16 + b2
                     -> output [16]; weights from numpy.random.default_rng(0), the same
                     arithmetic as the anchors' mlp.onnx (shared/anchors/models/make_mlp.py)

All four batch (max_batch_size 8, variable first dimension in the ONNX graph) and use platform
onnxruntime_onnx. Opset 13, IR version 8, so any onnxruntime >= 1.10 loads them; the files are
byte-identical on every run.

Usage:
    python examples/make_models.py [DIR]      # default DIR: examples/model_repository

Needs numpy and onnx; when onnxruntime is importable each model is also run once and checked.
Only the four model folders are replaced; anything else in DIR is left alone. Import this file
by path to reuse the builders (write_simple(repo), ..., write_all(repo)).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

OPSET = 13
IR_VERSION = 8
DIM = 16
HIDDEN = 64
MAX_BATCH = 8
DEFAULT_REPO = Path(__file__).resolve().parent / "model_repository"


# ---------------------------------------------------------------------------- config.pbtxt

def _tensors(section: str, tensors: list[tuple[str, str, list[int]]]) -> str:
    body = ",\n".join(
        f'  {{\n    name: "{name}"\n    data_type: {dtype}\n'
        f'    dims: [ {", ".join(map(str, dims))} ]\n  }}'
        for name, dtype, dims in tensors
    )
    return f"{section} [\n{body}\n]\n"


def _config(name: str, inputs, outputs) -> str:
    """Laid out like Triton's docs/examples/model_repository/*/config.pbtxt."""
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {MAX_BATCH}\n'
            + _tensors("input", inputs) + _tensors("output", outputs))


def _write(repo: Path, name: str, model, config: str) -> Path:
    import onnx

    model_dir = Path(repo) / name
    if model_dir.is_dir():
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    onnx.save(model, str(model_dir / "1" / "model.onnx"))
    (model_dir / "config.pbtxt").write_text(config)
    return model_dir


# ---------------------------------------------------------------------------- ONNX graphs

def _model(nodes, inputs, outputs, graph_name: str, initializers=()):
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, graph_name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, producer_name="naiad-examples",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _io(name: str, elem_type: int, dims: list) -> object:
    from onnx import helper

    return helper.make_tensor_value_info(name, elem_type, ["batch", *dims])


def build_simple():
    from onnx import TensorProto, helper

    ios = [_io(n, TensorProto.INT32, [DIM]) for n in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")]
    nodes = [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"], name="add"),
             helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"], name="sub")]
    return _model(nodes, ios[:2], ios[2:], "simple")


def build_simple_string():
    from onnx import TensorProto, helper

    ios = [_io(n, TensorProto.STRING, [DIM]) for n in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")]
    nodes = [
        helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32, name="parse0"),
        helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32, name="parse1"),
        helper.make_node("Add", ["a", "b"], ["sum"], name="add"),
        helper.make_node("Sub", ["a", "b"], ["diff"], name="sub"),
        helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=TensorProto.STRING, name="format0"),
        helper.make_node("Cast", ["diff"], ["OUTPUT1"], to=TensorProto.STRING, name="format1"),
    ]
    return _model(nodes, ios[:2], ios[2:], "simple_string")


def build_simple_identity():
    from onnx import TensorProto, helper

    ios = [_io(n, TensorProto.STRING, ["n"]) for n in ("INPUT0", "OUTPUT0")]
    return _model([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"], name="identity")],
                  ios[:1], ios[1:], "simple_identity")


def mlp_weights() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(w1 16x64, b1 64, w2 64x16, b2 16), float32, drawn in this order from default_rng(0)."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((DIM, HIDDEN)) / np.sqrt(DIM)).astype(np.float32)
    b1 = (rng.standard_normal((HIDDEN,)) * 0.01).astype(np.float32)
    w2 = (rng.standard_normal((HIDDEN, DIM)) / np.sqrt(HIDDEN)).astype(np.float32)
    b2 = (rng.standard_normal((DIM,)) * 0.01).astype(np.float32)
    return w1, b1, w2, b2


def mlp_numpy(x: np.ndarray) -> np.ndarray:
    """What the mlp model computes, in numpy."""
    w1, b1, w2, b2 = mlp_weights()
    return (np.maximum(x.astype(np.float32) @ w1 + b1, 0.0) @ w2 + b2).astype(np.float32)


def build_mlp():
    from onnx import TensorProto, helper, numpy_helper

    w1, b1, w2, b2 = mlp_weights()
    weights = [numpy_helper.from_array(a, n)
               for a, n in ((w1, "W1"), (b1, "B1"), (w2, "W2"), (b2, "B2"))]
    nodes = [
        helper.make_node("MatMul", ["input", "W1"], ["hidden_mm"], name="matmul1"),
        helper.make_node("Add", ["hidden_mm", "B1"], ["hidden_pre"], name="add1"),
        helper.make_node("Relu", ["hidden_pre"], ["hidden"], name="relu"),
        helper.make_node("MatMul", ["hidden", "W2"], ["out_mm"], name="matmul2"),
        helper.make_node("Add", ["out_mm", "B2"], ["output"], name="add2"),
    ]
    return _model(nodes, [_io("input", TensorProto.FLOAT, [DIM])],
                  [_io("output", TensorProto.FLOAT, [DIM])], "mlp", weights)


# ---------------------------------------------------------------------------- repository

def write_simple(repo: Path) -> Path:
    return _write(repo, "simple", build_simple(), _config(
        "simple", [("INPUT0", "TYPE_INT32", [DIM]), ("INPUT1", "TYPE_INT32", [DIM])],
        [("OUTPUT0", "TYPE_INT32", [DIM]), ("OUTPUT1", "TYPE_INT32", [DIM])]))


def write_simple_string(repo: Path) -> Path:
    return _write(repo, "simple_string", build_simple_string(), _config(
        "simple_string", [("INPUT0", "TYPE_STRING", [DIM]), ("INPUT1", "TYPE_STRING", [DIM])],
        [("OUTPUT0", "TYPE_STRING", [DIM]), ("OUTPUT1", "TYPE_STRING", [DIM])]))


def write_simple_identity(repo: Path) -> Path:
    return _write(repo, "simple_identity", build_simple_identity(), _config(
        "simple_identity", [("INPUT0", "TYPE_STRING", [-1])], [("OUTPUT0", "TYPE_STRING", [-1])]))


def write_mlp(repo: Path) -> Path:
    return _write(repo, "mlp", build_mlp(), _config(
        "mlp", [("input", "TYPE_FP32", [DIM])], [("output", "TYPE_FP32", [DIM])]))


def write_all(repo: Path) -> list[Path]:
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    return [write(repo) for write in (write_simple, write_simple_string, write_simple_identity,
                                      write_mlp)]


def self_check(repo: Path) -> None:
    """Run each model once with onnxruntime (CPU) and compare with numpy."""
    import onnxruntime as ort

    def run(name, feed):
        path = str(Path(repo) / name / "1" / "model.onnx")
        return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feed)

    a = np.arange(2 * DIM, dtype=np.int32).reshape(2, DIM)
    b = np.full((2, DIM), 7, dtype=np.int32)
    s, d = run("simple", {"INPUT0": a, "INPUT1": b})
    assert (s == a + b).all() and (d == a - b).all(), "simple"
    text = lambda x: x.astype(str).astype(object)  # noqa: E731
    s, d = run("simple_string", {"INPUT0": text(a), "INPUT1": text(b)})
    assert (s == text(a + b)).all() and (d == text(a - b)).all(), "simple_string"
    words = np.array([["naïve", "", "x y"]], dtype=object)
    assert (run("simple_identity", {"INPUT0": words})[0] == words).all(), "simple_identity"
    x = np.random.default_rng(1).standard_normal((3, DIM)).astype(np.float32)
    assert np.allclose(run("mlp", {"input": x})[0], mlp_numpy(x), atol=1e-5), "mlp"


def main(argv: list[str]) -> None:
    repo = Path(argv[0]) if argv else DEFAULT_REPO
    for model_dir in write_all(repo):
        print(f"wrote {model_dir}")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("onnxruntime not installed: self-check skipped")
        return
    self_check(repo)
    print("onnxruntime self-check ok")


if __name__ == "__main__":
    main(sys.argv[1:])
