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

Stateful models (sequence batcher; START/READY/END/CORRID are control inputs the server feeds):

    simple_sequence           Triton's: INT32 INPUT [1] -> OUTPUT = READY * (INPUT + START);
                              Direct strategy, no CORRID (uint64 and string ids)
    simple_dyna_sequence      Triton's: OUTPUT = READY * (INPUT + START + END * CORRID);
                              Oldest strategy, CORRID TYPE_UINT64, 2 instances
    simple_string_dyna_sequence
                              Triton QA's dyna_sequence accumulator with a TYPE_STRING CORRID:
                              acc = INPUT on START else acc + INPUT; OUTPUT = acc, plus the id
                              parsed as an integer on END. The accumulator is implicit state.
    simple_sequence_implicit  the seed's simple_sequence accumulator (acc = INPUT on START, else
                              acc + INPUT; READY 0 leaves it) as implicit state; Direct

All batch (max_batch_size 8, variable first dimension in the ONNX graph) and use platform
onnxruntime_onnx. Opset 13, IR version 8, so any onnxruntime >= 1.10 loads them; the files are
byte-identical on every run.

Usage:
    python examples/make_models.py [DIR]      # default DIR: examples/model_repository

Needs numpy and onnx; when onnxruntime is importable each model is also run once and checked.
Only the example model folders are replaced; anything else in DIR is left alone. Import this file
by path to reuse the builders (write_simple(repo), ..., write_all(repo); write_identity_image(repo),
a 3x224x224 FP32 Identity that is not an example, for benchmarks and the tests of large tensors).
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
        f"    dims: [ {', '.join(map(str, dims))} ]\n  }}"
        for name, dtype, dims in tensors
    )
    return f"{section} [\n{body}\n]\n"


def _config(name: str, inputs, outputs) -> str:
    """Laid out like Triton's docs/examples/model_repository/*/config.pbtxt."""
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {MAX_BATCH}\n'
        + _tensors("input", inputs)
        + _tensors("output", outputs)
    )


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
    model = helper.make_model(
        graph, producer_name="naiad-examples", opset_imports=[helper.make_opsetid("", OPSET)]
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _io(name: str, elem_type: int, dims: list) -> object:
    from onnx import helper

    return helper.make_tensor_value_info(name, elem_type, ["batch", *dims])


def build_simple():
    from onnx import TensorProto, helper

    ios = [_io(n, TensorProto.INT32, [DIM]) for n in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")]
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"], name="add"),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"], name="sub"),
    ]
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
    return _model(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"], name="identity")],
        ios[:1],
        ios[1:],
        "simple_identity",
    )


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


#: an image in FP32, 602 KB (benchmarks and the tests of large tensors)
IMAGE_SHAPE = [3, 224, 224]


def build_identity_image():
    """Identity over one batchable 3x224x224 FP32 tensor (not an example: benchmarks and the
    tests of large tensors write it with :func:`write_identity_image`)."""
    from onnx import TensorProto, helper

    ios = [_io(n, TensorProto.FLOAT, IMAGE_SHAPE) for n in ("input", "output")]
    nodes = [helper.make_node("Identity", ["input"], ["output"], name="identity")]
    return _model(nodes, ios[:1], ios[1:], "identity_image")


def build_mlp():
    from onnx import TensorProto, helper, numpy_helper

    w1, b1, w2, b2 = mlp_weights()
    weights = [
        numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (b1, "B1"), (w2, "W2"), (b2, "B2"))
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "W1"], ["hidden_mm"], name="matmul1"),
        helper.make_node("Add", ["hidden_mm", "B1"], ["hidden_pre"], name="add1"),
        helper.make_node("Relu", ["hidden_pre"], ["hidden"], name="relu"),
        helper.make_node("MatMul", ["hidden", "W2"], ["out_mm"], name="matmul2"),
        helper.make_node("Add", ["out_mm", "B2"], ["output"], name="add2"),
    ]
    return _model(
        nodes,
        [_io("input", TensorProto.FLOAT, [DIM])],
        [_io("output", TensorProto.FLOAT, [DIM])],
        "mlp",
        weights,
    )


# ---------------------------------------------------------------------------- sequence models


def _seq_io(name: str, elem_type: int, batching: bool = True) -> object:
    from onnx import helper

    if not batching:  # max_batch_size 0: each tensor is [1]
        return helper.make_tensor_value_info(name, elem_type, [1])
    return _io(name, elem_type, [1])


def _flag(name: str, out: str) -> object:
    """An INT32 0/1 control as BOOL."""
    from onnx import TensorProto, helper

    return helper.make_node("Cast", [name], [out], to=TensorProto.BOOL, name=f"{out}_cast")


def build_simple_sequence():
    """OUTPUT = READY * (INPUT + START): Triton's stateless simple_sequence."""
    from onnx import TensorProto, helper

    i32 = TensorProto.INT32
    nodes = [
        helper.make_node("Add", ["INPUT", "START"], ["sum"], name="add_start"),
        helper.make_node("Mul", ["READY", "sum"], ["OUTPUT"], name="mask_ready"),
    ]
    return _model(
        nodes,
        [_seq_io(n, i32) for n in ("INPUT", "START", "READY")],
        [_seq_io("OUTPUT", i32)],
        "simple_sequence",
    )


def build_simple_dyna_sequence():
    """OUTPUT = READY * (INPUT + START + END * CORRID), CORRID UINT64 (low 32 bits used)."""
    from onnx import TensorProto, helper

    i32 = TensorProto.INT32
    nodes = [
        helper.make_node("Cast", ["CORRID"], ["corrid"], to=i32, name="corrid_int32"),
        helper.make_node("Mul", ["END", "corrid"], ["end_corrid"], name="end_corrid"),
        helper.make_node("Add", ["INPUT", "START"], ["sum0"], name="add_start"),
        helper.make_node("Add", ["sum0", "end_corrid"], ["sum"], name="add_corrid"),
        helper.make_node("Mul", ["READY", "sum"], ["OUTPUT"], name="mask_ready"),
    ]
    inputs = [_seq_io(n, i32) for n in ("INPUT", "START", "END", "READY")]
    inputs.append(_seq_io("CORRID", TensorProto.UINT64))
    return _model(nodes, inputs, [_seq_io("OUTPUT", i32)], "simple_dyna_sequence")


def build_sequence_accumulator(corrid_type: int | None = None, batching: bool = True):
    """An INT32 accumulator kept as implicit state (INPUT_STATE in, OUTPUT_STATE out).

    READY 1, START 1: acc = INPUT; READY 1, START 0: acc += INPUT; READY 0: unchanged.
    OUTPUT = acc; with ``corrid_type`` (ONNX element type of CORRID; STRING ids are parsed as
    integers) the model also takes END, and OUTPUT = acc + CORRID on the END request.
    ``batching=False`` gives tensors without a batch dimension (for max_batch_size 0).
    """
    from onnx import TensorProto, helper

    i32 = TensorProto.INT32
    nodes = [
        _flag("START", "start"),
        _flag("READY", "ready"),
        helper.make_node("Mul", ["INPUT_STATE", "zero"], ["zeros"], name="zeros"),
        helper.make_node("Where", ["start", "zeros", "INPUT_STATE"], ["base"], name="reset"),
        helper.make_node("Add", ["base", "INPUT"], ["summed"], name="accumulate"),
        helper.make_node(
            "Where",
            ["ready", "summed", "INPUT_STATE"],
            ["OUTPUT_STATE"],
            name="keep_when_not_ready",
        ),
    ]
    zero = helper.make_tensor("zero", i32, [], [0])
    inputs = [_seq_io(n, i32, batching) for n in ("INPUT", "START", "READY", "INPUT_STATE")]
    if corrid_type is None:
        nodes.append(helper.make_node("Identity", ["OUTPUT_STATE"], ["OUTPUT"], name="output"))
    else:
        inputs += [_seq_io("END", i32, batching), _seq_io("CORRID", corrid_type, batching)]
        nodes += [
            helper.make_node("Cast", ["CORRID"], ["corrid"], to=i32, name="corrid_int32"),
            helper.make_node("Mul", ["END", "corrid"], ["end_corrid"], name="end_corrid"),
            helper.make_node("Add", ["OUTPUT_STATE", "end_corrid"], ["OUTPUT"], name="output"),
        ]
    outputs = [_seq_io("OUTPUT", i32, batching), _seq_io("OUTPUT_STATE", i32, batching)]
    return _model(nodes, inputs, outputs, "sequence_accumulator", [zero])


def _control(name: str, kind: str) -> str:
    value = "data_type: TYPE_UINT64" if kind == "CORRID" else "int32_false_true: [ 0, 1 ]"
    return (
        f'    {{\n      name: "{name}"\n      control [\n        {{\n'
        f"          kind: CONTROL_SEQUENCE_{kind}\n          {value}\n        }}\n"
        "      ]\n    }"
    )


def sequence_config(
    name: str,
    controls: list[str],
    *,
    strategy: str = "",
    corrid_type: str = "TYPE_UINT64",
    implicit_state: bool = False,
    idle_us: int = 0,
    instances: int = 0,
    extra: str = "",
) -> str:
    """A Triton-style config of the INT32 INPUT/OUTPUT [1] sequence models above.

    ``controls``: control names among START, END, READY, CORRID (the tensor names equal the
    kinds); ``strategy``: "" (Direct, Triton's default), or an ``oldest { ... }`` / ``direct
    { ... }`` block; ``implicit_state``: add the INPUT_STATE/OUTPUT_STATE ``state`` entry;
    ``instances``: the CPU instance count (0: left to the backend's default, as Triton's
    simple_sequence does); ``extra``: config text put before ``instance_group``.
    """
    blocks = [f"  max_sequence_idle_microseconds: {idle_us}"] if idle_us else []
    if strategy:
        blocks.append(f"  {strategy}")
    body = ",\n".join(_control(c, c) for c in controls).replace("TYPE_UINT64", corrid_type)
    blocks.append(f"  control_input [\n{body}\n  ]")
    if implicit_state:
        blocks.append(
            '  state [\n    {\n      input_name: "INPUT_STATE"\n'
            '      output_name: "OUTPUT_STATE"\n      data_type: TYPE_INT32\n'
            "      dims: [ 1 ]\n      initial_state: {\n        data_type: TYPE_INT32\n"
            '        dims: [ 1 ]\n        zero_data: true\n        name: "zero"\n'
            "      }\n    }\n  ]"
        )
    return (
        _config(name, [("INPUT", "TYPE_INT32", [1])], [("OUTPUT", "TYPE_INT32", [1])]).replace(
            "input [", "sequence_batching {\n" + "\n".join(blocks) + "\n}\ninput [", 1
        )
        + extra
        + "instance_group [\n  {\n"
        + (f"    count: {instances}\n" if instances else "")
        + "    kind: KIND_CPU\n  }\n]\n"
    )


# ---------------------------------------------------------------------------- repository


def write_simple(repo: Path) -> Path:
    return _write(
        repo,
        "simple",
        build_simple(),
        _config(
            "simple",
            [("INPUT0", "TYPE_INT32", [DIM]), ("INPUT1", "TYPE_INT32", [DIM])],
            [("OUTPUT0", "TYPE_INT32", [DIM]), ("OUTPUT1", "TYPE_INT32", [DIM])],
        ),
    )


def write_simple_string(repo: Path) -> Path:
    return _write(
        repo,
        "simple_string",
        build_simple_string(),
        _config(
            "simple_string",
            [("INPUT0", "TYPE_STRING", [DIM]), ("INPUT1", "TYPE_STRING", [DIM])],
            [("OUTPUT0", "TYPE_STRING", [DIM]), ("OUTPUT1", "TYPE_STRING", [DIM])],
        ),
    )


def write_simple_identity(repo: Path) -> Path:
    return _write(
        repo,
        "simple_identity",
        build_simple_identity(),
        _config(
            "simple_identity", [("INPUT0", "TYPE_STRING", [-1])], [("OUTPUT0", "TYPE_STRING", [-1])]
        ),
    )


def write_mlp(repo: Path) -> Path:
    return _write(
        repo,
        "mlp",
        build_mlp(),
        _config("mlp", [("input", "TYPE_FP32", [DIM])], [("output", "TYPE_FP32", [DIM])]),
    )


def write_identity_image(repo: Path, name: str = "identity_image") -> Path:
    return _write(
        repo,
        name,
        build_identity_image(),
        _config(
            name, [("input", "TYPE_FP32", IMAGE_SHAPE)], [("output", "TYPE_FP32", IMAGE_SHAPE)]
        ),
    )


def write_model(repo: Path, name: str, model, config: str) -> Path:
    """Write any ONNX ``model`` with its ``config`` text as ``repo/name`` (tests build variants
    of the models above this way)."""
    return _write(repo, name, model, config)


def write_simple_sequence(repo: Path, name: str = "simple_sequence") -> Path:
    return _write(repo, name, build_simple_sequence(), sequence_config(name, ["START", "READY"]))


def write_simple_dyna_sequence(repo: Path, name: str = "simple_dyna_sequence") -> Path:
    # Triton's parameter execute_delay_ms (its custom backend sleeps) means nothing to ONNX
    return _write(
        repo,
        name,
        build_simple_dyna_sequence(),
        sequence_config(
            name,
            ["START", "END", "READY", "CORRID"],
            idle_us=10_000_000,
            instances=2,
            strategy="oldest {\n    max_candidate_sequences: 1024\n"
            "    max_queue_delay_microseconds: 10000\n  }",
        ),
    )


def write_simple_string_dyna_sequence(
    repo: Path, name: str = "simple_string_dyna_sequence"
) -> Path:
    from onnx import TensorProto

    return _write(
        repo,
        name,
        build_sequence_accumulator(TensorProto.STRING),
        sequence_config(
            name,
            ["START", "END", "READY", "CORRID"],
            corrid_type="TYPE_STRING",
            implicit_state=True,
            idle_us=10_000_000,
            instances=2,
            strategy="oldest {\n    max_candidate_sequences: 1024\n"
            "    max_queue_delay_microseconds: 10000\n  }",
        ),
    )


def write_simple_sequence_implicit(repo: Path, name: str = "simple_sequence_implicit") -> Path:
    return _write(
        repo,
        name,
        build_sequence_accumulator(),
        sequence_config(name, ["START", "READY"], implicit_state=True),
    )


def write_all(repo: Path) -> list[Path]:
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    return [
        write(repo)
        for write in (
            write_simple,
            write_simple_string,
            write_simple_identity,
            write_mlp,
            write_simple_sequence,
            write_simple_dyna_sequence,
            write_simple_string_dyna_sequence,
            write_simple_sequence_implicit,
        )
    ]


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
    col = lambda *v: np.array(v, dtype=np.int32).reshape(-1, 1)  # noqa: E731
    x, start, ready, end = col(5, 7, 9), col(1, 0, 0), col(1, 1, 0), col(0, 1, 0)
    out = run("simple_sequence", {"INPUT": x, "START": start, "READY": ready})[0]
    assert (out == col(6, 7, 0)).all(), "simple_sequence"
    ids = np.array([[3], [1000], [4]], dtype=np.uint64)
    out = run(
        "simple_dyna_sequence",
        {"INPUT": x, "START": start, "READY": ready, "END": end, "CORRID": ids},
    )[0]
    assert (out == col(6, 1007, 0)).all(), "simple_dyna_sequence"
    state = col(100, 20, 3)
    out, acc = run(
        "simple_sequence_implicit",
        {"INPUT": x, "START": start, "READY": ready, "INPUT_STATE": state},
    )
    assert (acc == col(5, 27, 3)).all() and (out == acc).all(), "simple_sequence_implicit"
    sids = np.array([["3"], ["1002"], ["4"]], dtype=object)
    out, acc = run(
        "simple_string_dyna_sequence",
        {
            "INPUT": x,
            "START": start,
            "READY": ready,
            "END": end,
            "CORRID": sids,
            "INPUT_STATE": state,
        },
    )
    assert (acc == col(5, 27, 3)).all() and (out == col(5, 1029, 3)).all(), "string dyna"


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
