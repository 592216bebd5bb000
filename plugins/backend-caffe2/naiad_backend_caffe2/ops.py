"""Caffe2 operators as ONNX nodes (opset 13), NCHW order: one handler per operator type.

Each handler reads its operator's arguments with Caffe2's names and defaults and emits the
equivalent ONNX nodes through :class:`~.convert.Op`. Training-only behaviour (``SpatialBN`` or
``Dropout`` with ``is_test: 0``) and layouts other than NCHW fail the load with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .convert import Op
from .netdef import DTYPES, FILL_OPS

#: Caffe2 ``legacy_pad`` values (caffe2/operators/conv_pool_op_base.h)
_NOTSET, _VALID, _SAME, _CAFFE_LEGACY_POOLING = 0, 1, 2, 3

Handler = Callable[[Op], None]
HANDLERS: dict[str, Handler] = {}


def handles(*types: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for t in types:
            HANDLERS[t] = fn
        return fn

    return register


def _nchw(c: Op) -> None:
    order = c.s("order", "NCHW")
    if order != "NCHW":
        raise c.fail(f"order '{order}' is not supported (only NCHW)")


def _per_dim(
    c: Op, many: str, one: str, names: tuple[str, ...], n: int | None, default: int
) -> list[int] | None:
    """``many`` (list), else ``one`` (repeated), else the per-dimension names, else None."""
    if (values := c.ints(many)) is not None:
        return values
    if one in c.args:
        return [c.i(one)] * (n or 2)
    if any(name in c.args for name in names):
        return [c.i(name, default) for name in names]
    return None


def _spatial(c: Op, n: int | None) -> dict:
    """kernel_shape / strides / pads / dilations / auto_pad from Caffe2's conv-pool arguments:
    ``kernels`` or ``kernel`` or ``kernel_h``/``kernel_w``, the same for stride, dilation and pad
    (``pads`` is begins then ends; ``pad_t``/``pad_l``/``pad_b``/``pad_r``), and
    ``legacy_pad``."""
    kernel = _per_dim(c, "kernels", "kernel", ("kernel_h", "kernel_w"), n, 0)
    n = n or (len(kernel) if kernel else 2)
    attrs: dict = {}
    if kernel:
        attrs["kernel_shape"] = kernel
    attrs["strides"] = _per_dim(c, "strides", "stride", ("stride_h", "stride_w"), n, 1) or [1] * n
    dilations = _per_dim(c, "dilations", "dilation", ("dilation_h", "dilation_w"), n, 1)
    if dilations:
        attrs["dilations"] = dilations
    pads = c.ints("pads")
    if pads is None and "pad" in c.args:
        pads = [c.i("pad")] * (2 * n)
    if pads is None and any(p in c.args for p in ("pad_t", "pad_l", "pad_b", "pad_r")):
        pads = [c.i("pad_t"), c.i("pad_l"), c.i("pad_b"), c.i("pad_r")]
    legacy = c.i("legacy_pad", _NOTSET)
    if legacy == _SAME:
        attrs["auto_pad"] = "SAME_UPPER"
    elif legacy == _VALID:
        attrs["pads"] = [0] * (2 * n)
    elif legacy in (_NOTSET, _CAFFE_LEGACY_POOLING):
        attrs["pads"] = pads or [0] * (2 * n)
    else:
        raise c.fail(f"legacy_pad {legacy} is not a Caffe2 padding mode")
    for key in ("strides", "pads", "dilations", "kernel_shape"):
        if key in attrs and len(attrs[key]) != (2 * n if key == "pads" else n):
            raise c.fail(f"{key} {attrs[key]} do not fit {n} spatial dimensions")
    return attrs


@handles("Conv", "Conv1D", "Conv2D", "Conv3D")
def _conv(c: Op) -> None:
    _nchw(c)
    w = c.weight(1)
    attrs = _spatial(c, w.ndim - 2 if w is not None else None)
    inputs = [c.x(0), c.x(1)] + ([c.x(2)] if c.n_in > 2 else [])
    c.node("Conv", inputs, [c.y(0)], group=c.i("group", 1), **attrs)


@handles(
    "MaxPool",
    "MaxPool1D",
    "MaxPool2D",
    "MaxPool3D",
    "AveragePool",
    "AveragePool1D",
    "AveragePool2D",
    "AveragePool3D",
)
def _pool(c: Op) -> None:
    _nchw(c)
    kind = "MaxPool" if c.op.type.startswith("Max") else "AveragePool"
    if c.i("global_pooling"):
        c.node(f"Global{kind}", [c.x(0)], [c.y(0)])
        return
    attrs = _spatial(c, None)
    if "kernel_shape" not in attrs:
        raise c.fail("no kernel size (kernel, kernels or kernel_h/kernel_w) and not global_pooling")
    attrs.pop("dilations", None)
    if c.i("legacy_pad") == _CAFFE_LEGACY_POOLING:
        attrs["ceil_mode"] = 1  # Caffe's pooling rounds output sizes up
    if kind == "AveragePool":
        attrs["count_include_pad"] = c.i("count_include_pad", 0)
    c.node(kind, [c.x(0)], [c.y(0)], **attrs)


@handles("SpatialBN")
def _spatial_bn(c: Op) -> None:
    _nchw(c)
    if not c.i("is_test"):
        raise c.fail(
            "training mode (is_test: 0) computes batch statistics; a serving net needs is_test: 1"
        )
    c.node("BatchNormalization", [c.x(i) for i in range(5)], [c.y(0)], epsilon=c.f("epsilon", 1e-5))


@handles("AffineChannel")
def _affine_channel(c: Op) -> None:
    """Y = X * scale + bias per channel (dim 1), what Detectron's nets have instead of BN."""
    _nchw(c)
    x, rank = c.x(0), c.rank(c.x(0))
    if rank is None:
        raise c.fail("the rank of its input is unknown here")
    scale, bias, scaled = c.x(1), c.x(2), c.tmp("scaled")
    if rank > 2:  # [C] -> [C, 1, ...]
        axes = c.const(list(range(1, rank - 1)), np.int64)
        scale, bias = c.tmp("scale"), c.tmp("bias")
        c.node("Unsqueeze", [c.x(1), axes], [scale])
        c.node("Unsqueeze", [c.x(2), axes], [bias])
    c.node("Mul", [x, scale], [scaled])
    c.node("Add", [scaled, bias], [c.y(0)])


_UNARY = {
    "Relu": "Relu",
    "Sigmoid": "Sigmoid",
    "Tanh": "Tanh",
    "Exp": "Exp",
    "Log": "Log",
    "Sqrt": "Sqrt",
    "Abs": "Abs",
    "Negative": "Neg",
    "Softsign": "Softsign",
    "Floor": "Floor",
    "Ceil": "Ceil",
    "Not": "Not",
    "Sign": "Sign",
}
_IDENTITY = (
    "Copy",
    "Alias",
    "StopGradient",
    "EnsureCPUOutput",
    "CopyCPUToGPU",
    "CopyGPUToCPU",
    "CopyFromCPUInput",
)


@handles(*_UNARY)
def _unary(c: Op) -> None:
    c.node(_UNARY[c.op.type], [c.x(0)], [c.y(0)])


@handles(*_IDENTITY)
def _identity(c: Op) -> None:
    c.node("Identity", [c.x(0)], [c.y(0)])


@handles("LeakyRelu")
def _leaky_relu(c: Op) -> None:
    c.node("LeakyRelu", [c.x(0)], [c.y(0)], alpha=c.f("alpha", 0.01))


@handles("Elu")
def _elu(c: Op) -> None:
    c.node("Elu", [c.x(0)], [c.y(0)], alpha=c.f("alpha", 1.0))


@handles("Clip")
def _clip(c: Op) -> None:
    low = c.const(c.f("min"), np.float32) if "min" in c.args else ""
    high = c.const(c.f("max"), np.float32) if "max" in c.args else ""
    c.node("Clip", [c.x(0), low, high], [c.y(0)])


@handles("Dropout")
def _dropout(c: Op) -> None:
    if not c.i("is_test"):
        raise c.fail("training mode (is_test: 0) drops at random; a serving net needs is_test: 1")
    if c.wants(1):
        raise c.fail(f"its mask output '{c.op.output[1]}' is read, which naiad does not compute")
    c.node("Identity", [c.x(0)], [c.y(0)])


@handles("Sum", "Mean", "Max", "Min")
def _variadic(c: Op) -> None:
    inputs = [c.x(i) for i in range(c.n_in)]
    # a Sum of two is an Add, which onnxruntime fuses into the convolution before it
    onnx_type = "Add" if c.op.type == "Sum" and len(inputs) == 2 else c.op.type
    c.node(onnx_type if len(inputs) > 1 else "Identity", inputs, [c.y(0)])


@handles("Add", "Sub", "Mul", "Div")
def _binary(c: Op) -> None:
    """numpy broadcasting, and Caffe2's legacy ``broadcast: 1`` with ``axis``: B's dims line up
    with A's from ``axis`` on (B gets trailing 1-dims)."""
    a, b = c.x(0), c.x(1)
    axis = c.i("axis", -1) if "axis" in c.args else (1 if c.s("axis_str") == "C" else None)
    if c.i("broadcast") and axis is not None and axis != -1:
        rank_a, rank_b = c.rank(a), c.rank(b)
        if rank_a is None or rank_b is None:
            raise c.fail(
                "broadcast with an axis needs the ranks of both inputs, which are unknown here"
            )
        trailing = rank_a - (axis % rank_a) - rank_b
        if trailing < 0:
            raise c.fail(f"B of rank {rank_b} does not fit A of rank {rank_a} from axis {axis}")
        if trailing:
            axes = c.const(list(range(rank_b, rank_b + trailing)), np.int64)
            b_wide = c.tmp("b_wide")
            c.node("Unsqueeze", [b, axes], [b_wide])
            b = b_wide
    c.node(c.op.type, [a, b], [c.y(0)])


@handles("Scale")
def _scale(c: Op) -> None:
    c.node("Mul", [c.x(0), c.const(c.f("scale", 1.0), np.float32)], [c.y(0)])


@handles("FC", "FCTransposed")
def _fc(c: Op) -> None:
    """Y = X W^T + b with X flattened to 2-D at ``axis`` (FCTransposed: W is [K, N])."""
    if c.i("axis", 1) != 1:
        raise c.fail(f"axis {c.i('axis', 1)} is not supported (only 1)")
    w_value, w = c.x(1), c.weight(1)
    if w is not None and w.ndim != 2:
        axis_w = c.i("axis_w", 1)
        w_value = c.const(w.reshape(int(np.prod(w.shape[:axis_w])), -1))
    x = c.x(0)
    if c.rank(x) != 2:
        flat = c.tmp("flat")
        c.node("Flatten", [x], [flat], axis=1)
        x = flat
    c.node("Gemm", [x, w_value, c.x(2)], [c.y(0)], transB=0 if c.op.type == "FCTransposed" else 1)


@handles("MatMul")
def _matmul(c: Op) -> None:
    c.node("Gemm", [c.x(0), c.x(1)], [c.y(0)], transA=c.i("trans_a"), transB=c.i("trans_b"))


@handles("Softmax")
def _softmax(c: Op) -> None:
    """Caffe2 normalises over all dims from ``axis`` on (X seen as 2-D), ONNX 13 over one."""
    x, axis = c.x(0), c.i("axis", 1)
    rank = c.rank(x)
    if rank is not None and axis % rank == rank - 1:
        c.node("Softmax", [x], [c.y(0)], axis=-1)
        return
    if rank is not None:  # exp(x - max) / sum over the trailing axes: shapes stay known
        axes = list(range(axis % rank, rank))
        peak, shifted, exp, total = c.tmp("max"), c.tmp("shifted"), c.tmp("exp"), c.tmp("sum")
        c.node("ReduceMax", [x], [peak], axes=axes, keepdims=1)
        c.node("Sub", [x, peak], [shifted])
        c.node("Exp", [shifted], [exp])
        c.node("ReduceSum", [exp, c.const(axes, np.int64)], [total], keepdims=1)
        c.node("Div", [exp, total], [c.y(0)])
        return
    flat, soft, shape = c.tmp("flat"), c.tmp("soft"), c.tmp("shape")
    c.node("Flatten", [x], [flat], axis=axis)
    c.node("Softmax", [flat], [soft], axis=1)
    c.node("Shape", [x], [shape])
    c.node("Reshape", [soft, shape], [c.y(0)])


@handles("Concat")
def _concat(c: Op) -> None:
    axis = c.i("axis", 3 if c.s("order", "NCHW") == "NHWC" else 1)
    inputs = [c.x(i) for i in range(c.n_in)]
    if c.i("add_axis"):
        axes = c.const([axis], np.int64)
        wide = [c.tmp(f"in{i}") for i in range(len(inputs))]
        for value, out in zip(inputs, wide, strict=True):
            c.node("Unsqueeze", [value, axes], [out])
        inputs = wide
    out = c.y(0)
    c.node("Concat", inputs, [out], axis=axis)
    if c.wants(1):  # split_info: each input's size along the axis, int32
        sizes = []
        for value in inputs:
            shape, size = c.tmp("shape"), c.tmp("size")
            c.node("Shape", [value], [shape])
            c.node("Gather", [shape, c.const([axis], np.int64)], [size], axis=0)
            sizes.append(size)
        joined = c.tmp("split64")
        c.node("Concat", sizes, [joined], axis=0)
        c.node("Cast", [joined], [c.y(1)], to=_onnx_type(np.int32))


@handles("Reshape")
def _reshape(c: Op) -> None:
    x = c.x(0)
    if c.n_in > 1:
        shape = c.tmp("shape")
        c.node("Cast", [c.x(1)], [shape], to=_onnx_type(np.int64))
    elif (dims := c.ints("shape")) is not None:
        shape = c.const(dims, np.int64)
    else:
        raise c.fail("no new shape (argument 'shape' or a second input)")
    c.node("Reshape", [x, shape], [c.y(0)])
    if c.wants(1):  # old_shape
        c.node("Shape", [x], [c.y(1)])


@handles("Flatten")
def _flatten(c: Op) -> None:
    c.node("Flatten", [c.x(0)], [c.y(0)], axis=c.i("axis", 1))


@handles("FlattenToVec")
def _flatten_to_vec(c: Op) -> None:
    c.node("Reshape", [c.x(0), c.const([-1], np.int64)], [c.y(0)])


@handles("Transpose", "NCHW2NHWC", "NHWC2NCHW")
def _transpose(c: Op) -> None:
    perm = {"NCHW2NHWC": [0, 2, 3, 1], "NHWC2NCHW": [0, 3, 1, 2]}.get(c.op.type, c.ints("axes"))
    attrs = {"perm": perm} if perm is not None else {}
    c.node("Transpose", [c.x(0)], [c.y(0)], **attrs)


@handles("Squeeze", "ExpandDims")
def _squeeze(c: Op) -> None:
    dims = c.ints("dims")
    if dims is None:
        raise c.fail("no 'dims' argument")
    onnx_type = "Squeeze" if c.op.type == "Squeeze" else "Unsqueeze"
    c.node(onnx_type, [c.x(0), c.const(dims, np.int64)], [c.y(0)])


@handles("LRN")
def _lrn(c: Op) -> None:
    _nchw(c)
    if c.wants(1):
        raise c.fail(f"its scale output '{c.op.output[1]}' is read, which naiad does not compute")
    c.node(
        "LRN",
        [c.x(0)],
        [c.y(0)],
        size=c.i("size"),
        alpha=c.f("alpha", 0.0),
        beta=c.f("beta", 0.0),
        bias=c.f("bias", 1.0),
    )


@handles("PadImage")
def _pad_image(c: Op) -> None:
    _nchw(c)
    attrs = _spatial(c, 2)
    if "pads" not in attrs:
        raise c.fail("legacy_pad SAME is not supported for PadImage")
    t, left, b, r = attrs["pads"]
    mode = c.s("mode", "constant")
    if mode not in ("constant", "reflect", "edge"):
        raise c.fail(f"mode '{mode}' is not supported")
    pads = c.const([0, 0, t, left, 0, 0, b, r], np.int64)
    value = c.const(c.f("value", 0.0), np.float32)
    c.node("Pad", [c.x(0), pads, value], [c.y(0)], mode=mode)


@handles("Cast")
def _cast(c: Op) -> None:
    to = c.args.get("to")
    dtype = DTYPES.get(int(to.i)) if to is not None and not to.HasField("s") else None
    if dtype is None:
        raise c.fail("'to' must name a numeric Caffe2 data type")
    c.node("Cast", [c.x(0)], [c.y(0)], to=_onnx_type(dtype))


@handles(*FILL_OPS)
def _fill(c: Op) -> None:
    c.fill()


def _onnx_type(dtype) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
