"""Write a Caffe2 NetDef pair from a small ONNX or PyTorch model, without Caffe2.

    python -m naiad_backend_caffe2.export MODEL.onnx OUT_DIR
    python -m naiad_backend_caffe2.export MODEL.pt OUT_DIR --input-shape 3,224,224

writes ``OUT_DIR/model.netdef`` (the predict net) and ``OUT_DIR/init_model.netdef`` (the init
net: one ``GivenTensorFill`` per weight), the files a ``caffe2_netdef`` model's version folder
holds. A ``.pt`` file is a TorchScript module; it is exported to ONNX first (``torch.onnx``) with
a batch of one of ``--input-shape``. ONNX operators map to the Caffe2 operators Caffe2's own
model zoo nets use (Gemm -> FC, BatchNormalization -> SpatialBN, ...); any other operator fails,
named. From Python: :func:`from_onnx` and :func:`from_torch` return the two NetDef messages.
"""

from __future__ import annotations

import argparse
import io
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .caffe2_pb2 import Argument, NetDef, OperatorDef
from .netdef import INIT_PREFIX

#: numpy dtype of an initializer -> (Caffe2 fill operator, Argument field of its values)
_FILLS = {
    np.dtype(np.float32): ("GivenTensorFill", "floats"),
    np.dtype(np.float64): ("GivenTensorDoubleFill", "floats"),
    np.dtype(np.int32): ("GivenTensorIntFill", "ints"),
    np.dtype(np.int64): ("GivenTensorInt64Fill", "ints"),
    np.dtype(np.bool_): ("GivenTensorBoolFill", "ints"),
}
_UNARY = {
    "Relu": "Relu",
    "Sigmoid": "Sigmoid",
    "Tanh": "Tanh",
    "Exp": "Exp",
    "Log": "Log",
    "Sqrt": "Sqrt",
    "Abs": "Abs",
    "Neg": "Negative",
    "Identity": "Copy",
    "Floor": "Floor",
    "Ceil": "Ceil",
}
_SAME = {
    "Sum": "Sum",
    "Max": "Max",
    "Min": "Min",
    "Mean": "Mean",
    "Add": "Add",
    "Sub": "Sub",
    "Mul": "Mul",
    "Div": "Div",
}


class ExportError(ValueError):
    """The model uses something this writer cannot express as a Caffe2 NetDef."""


def _arg(name: str, value) -> Argument:
    arg = Argument(name=name)
    if isinstance(value, bool | int | np.integer):
        arg.i = int(value)
    elif isinstance(value, float | np.floating):
        arg.f = float(value)
    elif isinstance(value, str | bytes):
        arg.s = value.encode() if isinstance(value, str) else value
    elif all(isinstance(v, int | np.integer) for v in value):
        arg.ints.extend(int(v) for v in value)
    else:
        arg.floats.extend(float(v) for v in value)
    return arg


def fill_op(name: str, array: np.ndarray) -> OperatorDef:
    """The init-net operator that fills blob ``name`` with ``array``."""
    array = np.asarray(array)
    if array.dtype not in _FILLS:
        raise ExportError(f"weight '{name}' has dtype {array.dtype}, which has no Caffe2 fill")
    op_type, field = _FILLS[array.dtype]
    values = Argument(name="values")
    getattr(values, field).extend(array.reshape(-1).tolist())
    return OperatorDef(type=op_type, output=[name], arg=[_arg("shape", list(array.shape)), values])


class _Writer:
    def __init__(self, model) -> None:
        import onnx
        from onnx import numpy_helper

        self.graph = onnx.shape_inference.infer_shapes(model).graph
        self.weights = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        self.ranks = {
            v.name: len(v.type.tensor_type.shape.dim)
            for v in list(self.graph.value_info) + list(self.graph.input)
            if v.type.tensor_type.HasField("shape")
        }
        self.ops: list[OperatorDef] = []
        self.used: set[str] = set()  # weights the predict net reads as blobs

    def const(self, name: str) -> np.ndarray:
        if name not in self.weights:
            raise ExportError(f"'{name}' must be a constant (an initializer) for Caffe2")
        return self.weights[name]

    def emit(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], **args) -> None:
        self.used.update(i for i in inputs if i in self.weights)
        self.ops.append(
            OperatorDef(
                type=op_type,
                input=list(inputs),
                output=list(outputs),
                arg=[_arg(k, v) for k, v in args.items() if v is not None],
            )
        )

    def node(self, node) -> None:
        from onnx import helper

        a = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
        t, ins, outs = node.op_type, list(node.input), list(node.output)
        if t == "Constant":
            self.weights[outs[0]] = _constant(node)
        elif t in _UNARY:
            self.emit(_UNARY[t], ins[:1], outs)
        elif t in _SAME:
            self.emit(_SAME[t], ins, outs)
        elif t == "Conv":
            self.emit(
                "Conv",
                ins,
                outs,
                order="NCHW",
                group=a.get("group", 1),
                **_spatial(a, self.const(ins[1]).ndim - 2),
            )
        elif t in ("MaxPool", "AveragePool"):
            extra = {"count_include_pad": a.get("count_include_pad")} if t == "AveragePool" else {}
            if a.get("ceil_mode"):
                extra["legacy_pad"] = 3
            self.emit(
                t, ins[:1], outs[:1], order="NCHW", **extra, **_spatial(a, len(a["kernel_shape"]))
            )
        elif t in ("GlobalAveragePool", "GlobalMaxPool"):
            self.emit(t[len("Global") :], ins, outs, order="NCHW", global_pooling=1)
        elif t == "BatchNormalization":
            self.emit(
                "SpatialBN",
                ins,
                outs[:1],
                order="NCHW",
                is_test=1,
                epsilon=float(a.get("epsilon", 1e-5)),
            )
        elif t == "Gemm":
            self._gemm(a, ins, outs)
        elif t == "MatMul":
            self.emit("MatMul", ins, outs)
        elif t == "Softmax":
            rank = self.ranks.get(ins[0])
            axis = a.get("axis", -1)
            if rank is None or axis % rank != rank - 1:
                raise ExportError(f"Softmax over axis {axis} of a rank-{rank} tensor")
            self.emit("Softmax", ins, outs, axis=rank - 1)
        elif t == "LeakyRelu":
            self.emit("LeakyRelu", ins, outs, alpha=float(a.get("alpha", 0.01)))
        elif t == "Flatten":
            self.emit("Flatten", ins, outs, axis=a.get("axis", 1))
        elif t == "Concat":
            self.emit("Concat", ins, [outs[0], f"{outs[0]}_split_info"], axis=a["axis"])
        elif t == "Reshape":
            shape = [int(v) for v in self.const(ins[1])]
            self.emit("Reshape", ins[:1], [outs[0], f"{outs[0]}_old_shape"], shape=shape)
        elif t == "Dropout":
            self.emit("Dropout", ins[:1], [outs[0], f"{outs[0]}_mask"], is_test=1)
        elif t == "Transpose":
            self.emit("Transpose", ins, outs, axes=a.get("perm"))
        elif t == "Clip":
            lo = float(self.const(ins[1])) if len(ins) > 1 and ins[1] else a.get("min")
            hi = float(self.const(ins[2])) if len(ins) > 2 and ins[2] else a.get("max")
            self.emit("Clip", ins[:1], outs, min=lo, max=hi)
        elif t in ("Squeeze", "Unsqueeze"):
            dims = a.get("axes") or [int(v) for v in self.const(ins[1])]
            self.emit("Squeeze" if t == "Squeeze" else "ExpandDims", ins[:1], outs, dims=dims)
        else:
            raise ExportError(
                f"ONNX operator '{t}' ({node.name or outs[0]}) has no Caffe2 "
                "equivalent in this writer"
            )

    def _gemm(self, a: dict, ins: list[str], outs: list[str]) -> None:
        if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0):
            raise ExportError("Gemm with alpha/beta other than 1 or transA is not FC")
        if len(ins) < 3:
            n = self.const(ins[1]).shape[0 if a.get("transB", 0) else 1]
            ins = [*ins, f"{outs[0]}_zero_bias"]
            self.weights[ins[2]] = np.zeros(n, np.float32)
        self.emit("FC" if a.get("transB", 0) else "FCTransposed", ins, outs)


def _spatial(a: dict, n: int) -> dict:
    args = {
        "kernels": a.get("kernel_shape"),
        "strides": a.get("strides", [1] * n),
        "dilations": a.get("dilations"),
    }
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "SAME_UPPER":
        args["legacy_pad"] = 2
    elif auto_pad == "VALID":
        args["legacy_pad"] = 1
    elif auto_pad == "NOTSET":
        args["pads"] = a.get("pads", [0] * (2 * n))
    else:
        raise ExportError(f"auto_pad {auto_pad} has no Caffe2 equivalent")
    return args


def _constant(node) -> np.ndarray:
    from onnx import numpy_helper

    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
    raise ExportError(f"Constant node {node.name} without a tensor 'value'")


def from_onnx(model, name: str = "") -> tuple[NetDef, NetDef]:
    """(predict net, init net) computing what ONNX ``model`` (a ModelProto) computes."""
    writer = _Writer(model)
    for node in writer.graph.node:
        writer.node(node)
    weights = [w for w in writer.weights if w in writer.used]
    inputs = [i.name for i in writer.graph.input if i.name not in writer.weights]
    outputs = [o.name for o in writer.graph.output]
    name = name or writer.graph.name or "model"
    predict = NetDef(
        name=name, op=writer.ops, external_input=inputs + weights, external_output=outputs
    )
    init = NetDef(
        name=f"{name}_init",
        op=[fill_op(w, writer.weights[w]) for w in weights],
        external_output=weights,
    )
    return predict, init


def from_torch(
    module, example, input_names: Sequence[str], output_names: Sequence[str], name: str = ""
) -> tuple[NetDef, NetDef]:
    """(predict net, init net) of a PyTorch module, through ``torch.onnx.export`` with the
    first dimension of every input and output dynamic (the batch). Batch norms stay SpatialBN
    operators (as in Caffe2's own nets) instead of being folded into the convolutions."""
    import onnx
    import torch

    buffer = io.BytesIO()
    axes = {n: {0: "batch"} for n in [*input_names, *output_names]}
    with warnings.catch_warnings():  # the TorchScript exporter warns that it is the old one
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            example,
            buffer,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=axes,
            opset_version=13,
            dynamo=False,
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    return from_onnx(onnx.load_from_string(buffer.getvalue()), name)


def write_pair(
    predict: NetDef, init: NetDef, version_dir: Path, filename: str = "model.netdef"
) -> tuple[Path, Path]:
    """Write ``filename`` and ``init_<filename>`` into ``version_dir``, Caffe2's binary format."""
    version_dir = Path(version_dir)
    version_dir.mkdir(parents=True, exist_ok=True)
    paths = (version_dir / filename, version_dir / (INIT_PREFIX + filename))
    for path, net in zip(paths, (predict, init), strict=True):
        path.write_bytes(net.SerializeToString(deterministic=True))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m naiad_backend_caffe2.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("model", type=Path, help="an ONNX model (.onnx) or TorchScript (.pt)")
    parser.add_argument("out_dir", type=Path, help="folder for model.netdef + init_model.netdef")
    parser.add_argument(
        "--input-shape",
        help="for .pt: one input's shape without the batch dimension, e.g. 3,224,224",
    )
    parser.add_argument("--input-name", default="data", help="for .pt (default: data)")
    parser.add_argument("--output-name", default="prob", help="for .pt (default: prob)")
    ns = parser.parse_args(argv)
    try:
        if ns.model.suffix == ".pt":
            import torch

            if not ns.input_shape:
                parser.error("a TorchScript model needs --input-shape")
            shape = [1, *(int(d) for d in ns.input_shape.split(","))]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = torch.jit.load(str(ns.model), map_location="cpu")
            nets = from_torch(module, (torch.zeros(shape),), [ns.input_name], [ns.output_name])
        else:
            import onnx

            nets = from_onnx(onnx.load(str(ns.model)))
    except ExportError as exc:
        print(f"cannot export {ns.model}: {exc}", file=sys.stderr)
        return 1
    for path in write_pair(*nets, ns.out_dir):
        print(f"wrote {path}")
    predict = nets[0]
    print(
        f"inputs: {[i for i in predict.external_input if i not in set(nets[1].external_output)]}"
        f"  outputs: {list(predict.external_output)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
