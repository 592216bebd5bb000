"""Reading Caffe2 model files: a NetDef pair, and the weights its init net fills.

A Caffe2 model is two NetDef protobufs: the *init net* (``init_model.netdef``), whose operators
fill the weight blobs (``GivenTensorFill`` with the values inline, ``ConstantFill``, ...), and
the *predict net* (``model.netdef``), which computes the outputs from the inputs and those blobs.
Both are read in Caffe2's binary wire format, or protobuf text format when a file is not binary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import message, text_format
from naiad import ModelLoadError

from .caffe2_pb2 import Argument, NetDef, OperatorDef, TensorProto

#: Triton's (TRTIS's) names: the init net is the predict net's file name with this prefix
INIT_PREFIX = "init_"

#: Caffe2 TensorProto.DataType -> numpy dtype (STRING and the hash states have none)
DTYPES: dict[int, np.dtype] = {
    TensorProto.FLOAT: np.dtype(np.float32),
    TensorProto.INT32: np.dtype(np.int32),
    TensorProto.BYTE: np.dtype(np.uint8),
    TensorProto.BOOL: np.dtype(np.bool_),
    TensorProto.UINT8: np.dtype(np.uint8),
    TensorProto.INT8: np.dtype(np.int8),
    TensorProto.UINT16: np.dtype(np.uint16),
    TensorProto.INT16: np.dtype(np.int16),
    TensorProto.INT64: np.dtype(np.int64),
    TensorProto.FLOAT16: np.dtype(np.float16),
    TensorProto.DOUBLE: np.dtype(np.float64),
}

#: fill operator -> (dtype of the blob, Argument field that holds ``values``)
_GIVEN_FILLS: dict[str, tuple[np.dtype, str]] = {
    "GivenTensorFill": (np.dtype(np.float32), "floats"),
    "GivenTensorDoubleFill": (np.dtype(np.float64), "floats"),
    "GivenTensorIntFill": (np.dtype(np.int32), "ints"),
    "GivenTensorInt64Fill": (np.dtype(np.int64), "ints"),
    "GivenTensorInt16Fill": (np.dtype(np.int16), "ints"),
    "GivenTensorBoolFill": (np.dtype(np.bool_), "ints"),
    "GivenTensorByteStringToUInt8Fill": (np.dtype(np.uint8), "strings"),
}
FILL_OPS = frozenset(_GIVEN_FILLS) | {"ConstantFill"}


@dataclass(frozen=True, slots=True)
class NetPair:
    """A Caffe2 model: the predict net and the blobs its init net fills."""

    predict: NetDef
    weights: dict[str, np.ndarray]
    #: the predict net's file, for messages
    path: Path


def read_netdef(path: Path) -> NetDef:
    """Parse one NetDef file; a missing, truncated or corrupt file raises ModelLoadError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(f"unable to find Caffe2 NetDef file '{path}'") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read Caffe2 NetDef file '{path}': {exc}") from exc
    net = NetDef()
    try:
        net.ParseFromString(data)
    except message.DecodeError as binary_error:
        try:  # Caffe2 also wrote nets as protobuf text (``*.pbtxt`` renamed)
            text_format.Parse(data.decode("utf-8"), net)
        except (UnicodeDecodeError, text_format.ParseError):
            raise ModelLoadError(
                f"'{path}' is not a Caffe2 NetDef (truncated or corrupt file: {binary_error})"
            ) from None
    if not net.op:
        raise ModelLoadError(
            f"'{path}' is not a Caffe2 NetDef: it holds no operators "
            f"({len(data)} bytes; an empty, truncated or foreign file)"
        )
    return net


def read_pair(version_path: Path, filename: str) -> NetPair:
    """The predict net ``filename`` and the init net ``init_<filename>`` beside it."""
    path = Path(version_path) / filename
    predict = read_netdef(path)
    init = read_netdef(path.with_name(INIT_PREFIX + path.name))
    weights: dict[str, np.ndarray] = {}
    for op in init.op:
        for name, value in run_fill(op, f"init net '{path.with_name(INIT_PREFIX + path.name)}'"):
            weights[name] = value
    return NetPair(predict, weights, path)


def args(op: OperatorDef) -> dict[str, Argument]:
    return {a.name: a for a in op.arg}


def run_fill(op: OperatorDef, where: str) -> list[tuple[str, np.ndarray]]:
    """The blobs a fill operator writes; any other operator raises ModelLoadError."""
    if op.type not in FILL_OPS:
        raise ModelLoadError(
            f"{where}: operator '{op.type}' (outputs {list(op.output)}) is not a fill operator "
            f"naiad can evaluate; supported: {', '.join(sorted(FILL_OPS))}"
        )
    if len(op.input):
        raise ModelLoadError(
            f"{where}: {op.type} with inputs {list(op.input)} (a shape from "
            "a blob) is not supported; only fills with a constant shape"
        )
    a = args(op)
    shape = [int(d) for d in a["shape"].ints] if "shape" in a else []
    if op.type == "ConstantFill":
        if "extra_shape" in a:
            shape += [int(d) for d in a["extra_shape"].ints]
        dtype = DTYPES.get(a["dtype"].i if "dtype" in a else TensorProto.FLOAT)
        if dtype is None:
            raise ModelLoadError(f"{where}: ConstantFill of dtype {a['dtype'].i} is not supported")
        value = a.get("value")
        scalar = 0 if value is None else (value.f if value.HasField("f") else value.i)
        array = np.full(shape, scalar, dtype=dtype)
    else:
        dtype, field = _GIVEN_FILLS[op.type]
        values = getattr(a["values"], field) if "values" in a else []
        if field == "strings":
            flat = np.frombuffer(b"".join(values), dtype=np.uint8)
        else:
            flat = np.asarray(values, dtype=dtype)
        if "shape" not in a:
            shape = [flat.size]
        if flat.size != int(np.prod(shape, dtype=np.int64)):
            raise ModelLoadError(
                f"{where}: {op.type} of '{op.output[0] if op.output else '?'}' has "
                f"{flat.size} values for shape {shape}"
            )
        array = flat.astype(dtype, copy=False).reshape(shape)
    return [(name, array) for name in op.output]
