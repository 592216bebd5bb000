"""NetDef pairs the caffe2 tests build: from PyTorch and ONNX models with the export tool, and
by hand in the style of Caffe2's model zoo nets, each with a reference computed another way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from naiad_backend_caffe2.caffe2_pb2 import Argument, NetDef, OperatorDef
from naiad_backend_caffe2.export import fill_op, from_onnx, from_torch, write_pair
from onnx import TensorProto, helper, numpy_helper

MAX_BATCH = 8


def config(name: str, inputs, outputs, max_batch: int = MAX_BATCH, extra: str = "") -> str:
    """config.pbtxt text; inputs/outputs: (name, dims), all FP32."""

    def tensors(items):
        return ", ".join(
            f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ {", ".join(map(str, d))} ] }}'
            for n, d in items
        )

    text = f'name: "{name}"\nplatform: "caffe2_netdef"\nmax_batch_size: {max_batch}\n'
    text += f"input [ {tensors(inputs)} ]\n"
    if outputs:
        text += f"output [ {tensors(outputs)} ]\n"
    return text + extra


def write_model(repo: Path, name: str, nets, text: str) -> Path:
    write_pair(*nets, repo / name / "1")
    (repo / name / "config.pbtxt").write_text(text)
    return repo / name


# ---------------------------------------------------------------------------- from PyTorch


def mlp() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4), torch.nn.Softmax(1)
    ).eval()


class Block(torch.nn.Module):
    """conv-bn-relu-conv-bn + identity (or 1x1 projection), relu: a ResNet basic block."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = torch.nn.BatchNorm2d(cout)
        self.c2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = torch.nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return torch.relu(y + (x if self.proj is None else self.proj(x)))


class ResNetish(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 7, 2, 3, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU()
        )
        self.pool = torch.nn.MaxPool2d(3, 2, 1)
        self.blocks = torch.nn.Sequential(Block(8, 8, 1), Block(8, 16, 2), Block(16, 16, 1))
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        y = self.blocks(self.pool(self.stem(x)))
        y = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1)
        return torch.softmax(self.fc(y), 1)


def resnetish() -> torch.nn.Module:
    torch.manual_seed(2)
    model = ResNetish()
    with torch.no_grad():  # batch norms with statistics that matter
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def torch_pair(module: torch.nn.Module, shape) -> tuple[NetDef, NetDef]:
    return from_torch(module, (torch.zeros(1, *shape),), ["data"], ["prob"])


def run_torch(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


# ---------------------------------------------------------------------------- from ONNX


def conv_onnx() -> onnx.ModelProto:
    """A small conv net over many operators: grouped, dilated and strided convolutions with
    asymmetric pads, batch norm, clip, max/average pool with padding, concat, mul by a
    per-channel constant, global pooling, flatten, gemm, softmax. Input [batch, 4, 20, 20]."""
    rng = np.random.default_rng(3)

    def w(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    inits = {
        "w1": w(8, 4, 3, 3), "b1": w(8), "w2": w(8, 2, 3, 3), "w3": w(6, 8, 1, 1),
        "bn_s": w(8) + 1, "bn_b": w(8), "bn_m": w(8), "bn_v": np.abs(w(8)) + 0.5,
        "ch": w(14, 1, 1), "fc_w": w(14, 5), "fc_b": w(5),
        "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32),
    }  # fmt: skip
    node = helper.make_node
    nodes = [
        node("Conv", ["data", "w1", "b1"], ["c1"], pads=[1, 0, 2, 1], strides=[2, 1]),
        node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], epsilon=1e-3),
        node("Clip", ["bn", "lo", "hi"], ["r1"]),
        node("Conv", ["r1", "w2"], ["c2"], group=4, dilations=[2, 2], pads=[2, 2, 2, 2]),
        node("MaxPool", ["c2"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        node("AveragePool", ["r1"], ["p2"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]),
        node("Conv", ["p2", "w3"], ["c3"]),
        node("Concat", ["p1", "c3"], ["cat"], axis=1),
        node("Mul", ["cat", "ch"], ["scaled"]),
        node("Dropout", ["scaled"], ["drop"]),
        node("GlobalAveragePool", ["drop"], ["gap"]),
        node("Flatten", ["gap"], ["flat"], axis=1),
        node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        node("Softmax", ["logits"], ["prob"], axis=1),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "convnet",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", 4, 20, 20])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 5])],
        initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def onnx_pair(model: onnx.ModelProto) -> tuple[NetDef, NetDef]:
    return from_onnx(model)


def run_onnx(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


# ---------------------------------------------------------------------------- by hand


def arg(name: str, value) -> Argument:
    if isinstance(value, str):
        return Argument(name=name, s=value.encode())
    if isinstance(value, float):
        return Argument(name=name, f=value)
    if isinstance(value, list):
        return Argument(name=name, ints=value)
    return Argument(name=name, i=value)


def op(op_type: str, inputs, outputs, **args) -> OperatorDef:
    return OperatorDef(
        type=op_type, input=inputs, output=outputs, arg=[arg(k, v) for k, v in args.items()]
    )


ZOO_WEIGHTS_RNG = 4


def zoo_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(ZOO_WEIGHTS_RNG)

    def w(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return {
        "conv1_w": w(6, 3, 3, 5), "conv1_b": w(6),
        "bn_s": w(6) + 1, "bn_b": w(6), "bn_rm": w(6), "bn_riv": np.abs(w(6)) + 0.5,
        "mul_c": w(6), "add_c": w(6),
        "fc_w": w(4, 12, 1, 1), "fc_b": w(4),
    }  # fmt: skip


def zoo_pair() -> tuple[NetDef, NetDef]:
    """A net as Caffe2 wrote them: per-dimension legacy arguments (kernel_h/kernel_w, stride_h,
    pad_t/pad_l/pad_b/pad_r), Relu in place, SpatialBN, Mul and Add with ``broadcast: 1,
    axis: 1``, Scale, MaxPool with ``legacy_pad: 3`` (Caffe's rounding up), a ConstantFill in
    the predict net, Sum of three, Copy, Transpose twice, Concat (its split_info unread),
    AveragePool ``global_pooling``, FC with 4-D weights, Softmax on a 4-D blob (Caffe2
    normalises over all dims from the axis on). Input [batch, 3, 11, 13]."""
    ops = [
        op("Conv", ["data", "conv1_w", "conv1_b"], ["conv1"], kernel_h=3, kernel_w=5,
           stride_h=1, stride_w=2, pad_t=1, pad_l=2, pad_b=0, pad_r=1, order="NCHW"),
        op("SpatialBN", ["conv1", "bn_s", "bn_b", "bn_rm", "bn_riv"], ["conv1"], is_test=1,
           epsilon=1e-4, order="NCHW"),
        op("Relu", ["conv1"], ["conv1"]),
        op("Mul", ["conv1", "mul_c"], ["mul"], broadcast=1, axis=1),
        op("Add", ["mul", "add_c"], ["add"], broadcast=1, axis=1),
        op("Scale", ["add"], ["scaled"], scale=0.5),
        op("ConstantFill", [], ["ones"], shape=[1, 6, 1, 1], value=1.0),
        op("Sum", ["scaled", "ones", "conv1"], ["sum"]),
        op("MaxPool", ["sum"], ["pool"], kernel=2, stride=2, legacy_pad=3, order="NCHW"),
        op("Copy", ["pool"], ["pool_copy"]),
        op("Transpose", ["pool_copy"], ["pool_t"], axes=[0, 1, 3, 2]),
        op("Transpose", ["pool_t"], ["pool_back"], axes=[0, 1, 3, 2]),
        op("Concat", ["pool", "pool_back"], ["cat", "cat_split"], axis=1, order="NCHW"),
        op("Clip", ["cat"], ["clipped"], min=-1.0, max=2.5),
        op("AveragePool", ["clipped"], ["gap"], global_pooling=1, order="NCHW"),
        op("FC", ["gap", "fc_w", "fc_b"], ["fc"]),
        op("Reshape", ["fc"], ["fc4", "fc_old_shape"], shape=[-1, 2, 2, 1]),
        op("Softmax", ["fc4"], ["prob"], axis=1),
        op("Dropout", ["prob"], ["prob_out", "prob_mask"], is_test=1),
    ]  # fmt: skip
    weights = zoo_weights()
    predict = NetDef(
        name="zoo", op=ops, external_input=["data", *weights], external_output=["prob_out"]
    )
    init = NetDef(name="zoo_init", op=[fill_op(n, a) for n, a in weights.items()])
    return predict, init


def zoo_reference(x: np.ndarray) -> np.ndarray:
    """What zoo_pair computes, with torch.nn.functional."""
    import torch.nn.functional as F

    p = {n: torch.from_numpy(a) for n, a in zoo_weights().items()}
    t = torch.from_numpy(x)
    t = F.pad(t, (2, 1, 1, 0))  # W left/right, H top/bottom
    conv = F.conv2d(t, p["conv1_w"], p["conv1_b"], stride=(1, 2))
    conv = F.batch_norm(conv, p["bn_rm"], p["bn_riv"], p["bn_s"], p["bn_b"], eps=1e-4)
    conv = torch.relu(conv)
    y = (conv * p["mul_c"].view(1, 6, 1, 1) + p["add_c"].view(1, 6, 1, 1)) * 0.5
    y = y + 1.0 + conv
    pool = F.max_pool2d(y, 2, 2, ceil_mode=True)
    cat = torch.clamp(torch.cat([pool, pool], 1), -1.0, 2.5)
    gap = cat.mean(dim=(2, 3))
    fc = gap @ p["fc_w"].reshape(4, 12).T + p["fc_b"]
    return torch.softmax(fc.reshape(-1, 4), 1).reshape(-1, 2, 2, 1).numpy()


def unsupported_pair() -> tuple[NetDef, NetDef]:
    """A net whose second operator is one naiad does not convert (``Int8Quantize``)."""
    ops = [op("Relu", ["data"], ["r"]), op("Int8Quantize", ["r"], ["q"], Y_scale=0.1)]
    predict = NetDef(name="unsupported", op=ops, external_input=["data"], external_output=["q"])
    init = NetDef(name="unsupported_init", op=[fill_op("unused", np.zeros(1, np.float32))])
    return predict, init


def misc_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {"mm_w": (rng.standard_normal((4 * 6 * 9, 3)) * 0.1).astype(np.float32)}


def misc_pair() -> tuple[NetDef, NetDef]:
    """The remaining operators, no batching: PadImage (reflect), LRN, LeakyRelu, Elu, Mean, Max,
    Min, NCHW2NHWC and back, ExpandDims and Squeeze, FlattenToVec, Reshape with its old_shape
    read, MatMul, Concat with its split_info read, Sigmoid, Cast to double. Input [2, 4, 5, 6];
    outputs out (FP64 [2, 6]), split (INT32 [2]), old_shape (INT64 [1])."""
    ops = [
        op("PadImage", ["data"], ["pad"], pad_t=1, pad_l=2, pad_b=0, pad_r=1, mode="reflect"),
        op("LRN", ["pad"], ["lrn", "lrn_scale"], size=3, alpha=0.01, beta=0.75, bias=1.0),
        op("LeakyRelu", ["lrn"], ["leaky"], alpha=0.2),
        op("Elu", ["lrn"], ["elu"], alpha=0.5),
        op("Mean", ["leaky", "elu"], ["mean"]),
        op("Max", ["leaky", "elu", "mean"], ["max"]),
        op("Min", ["max", "lrn"], ["min"]),
        op("NCHW2NHWC", ["min"], ["nhwc"]),
        op("NHWC2NCHW", ["nhwc"], ["nchw"]),
        op("ExpandDims", ["nchw"], ["wide"], dims=[1]),
        op("Squeeze", ["wide"], ["narrow"], dims=[1]),
        op("FlattenToVec", ["narrow"], ["vec"]),
        op("Reshape", ["vec"], ["rows", "old_shape"], shape=[2, -1]),
        op("MatMul", ["rows", "mm_w"], ["mm"]),
        op("Sigmoid", ["mm"], ["sig"]),
        op("Concat", ["mm", "sig"], ["cat", "split"], axis=1),
        op("Cast", ["cat"], ["out"], to=13),  # DOUBLE
    ]  # fmt: skip
    weights = misc_weights()
    predict = NetDef(name="misc", op=ops, external_input=["data", *weights],
                     external_output=["out", "split", "old_shape"])  # fmt: skip
    init = NetDef(name="misc_init", op=[fill_op(n, a) for n, a in weights.items()])
    return predict, init


def misc_reference(x: np.ndarray) -> np.ndarray:
    import torch.nn.functional as F

    t = F.pad(torch.from_numpy(x), (2, 1, 1, 0), mode="reflect")
    lrn = F.local_response_norm(t, 3, alpha=0.01, beta=0.75, k=1.0)
    leaky, elu = F.leaky_relu(lrn, 0.2), F.elu(lrn, 0.5)
    mean = (leaky + elu) / 2
    low = torch.minimum(torch.maximum(torch.maximum(leaky, elu), mean), lrn)
    mm = low.reshape(2, -1) @ torch.from_numpy(misc_weights()["mm_w"])
    return torch.cat([mm, torch.sigmoid(mm)], 1).double().numpy()
