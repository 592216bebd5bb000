"""Datatypes and tensor encodings shared by every transport and every backend.

Three names exist for each datatype: the protocol name (``"FP32"``), the ModelConfig enum name
(``"TYPE_FP32"``) and a numpy dtype. BYTES tensors are numpy ``object`` arrays of ``bytes``; on the
wire each element is a 4-byte little-endian length followed by the bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidArgument, ModelLoadError

#: protocol name -> numpy dtype (BYTES -> object)
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

#: little-endian dtypes used to read and write binary tensor data
WIRE_DTYPES: dict[str, np.dtype] = {
    name: (dt.newbyteorder("<") if dt.itemsize > 1 and dt.kind != "O" else dt)
    for name, dt in NUMPY_DTYPES.items()
}

#: protocol name -> bytes per element (BYTES: variable, 0 here)
ITEM_SIZES: dict[str, int] = {
    name: (0 if name == "BYTES" else dt.itemsize) for name, dt in NUMPY_DTYPES.items()
}
ITEM_SIZES["BF16"] = 2

_CONFIG_TO_PROTOCOL = {f"TYPE_{n}": n for n in NUMPY_DTYPES if n != "BYTES"}
_CONFIG_TO_PROTOCOL["TYPE_STRING"] = "BYTES"
_CONFIG_TO_PROTOCOL["TYPE_BF16"] = "BF16"
_PROTOCOL_TO_CONFIG = {v: k for k, v in _CONFIG_TO_PROTOCOL.items()}

_NUMPY_TO_PROTOCOL: dict[np.dtype, str] = {
    dt: name for name, dt in NUMPY_DTYPES.items() if name != "BYTES"
}


def config_to_protocol(type_name: str) -> str:
    """``"TYPE_FP32"`` -> ``"FP32"``; ``"TYPE_STRING"`` -> ``"BYTES"``."""
    return _CONFIG_TO_PROTOCOL.get(type_name, "INVALID")


def protocol_to_config(datatype: str) -> str:
    """``"FP32"`` -> ``"TYPE_FP32"``; ``"BYTES"`` -> ``"TYPE_STRING"``."""
    return _PROTOCOL_TO_CONFIG.get(datatype, "TYPE_INVALID")


def numpy_to_protocol(dtype: np.dtype) -> str:
    """The protocol datatype of a numpy array (object/str/bytes arrays are BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    found = _NUMPY_TO_PROTOCOL.get(
        dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype
    )
    if found is None:
        raise InvalidArgument(f"unsupported numpy datatype {dtype}")
    return found


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """Flatten a BYTES tensor into Triton's length-prefixed wire form."""
    parts: list[bytes] = []
    pack = struct.Struct("<I").pack
    for item in array.reshape(-1):
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif not isinstance(item, (bytes, bytearray, memoryview)):
            item = str(item).encode("utf-8")
        parts.append(pack(len(item)))
        parts.append(bytes(item))
    return b"".join(parts)


def deserialize_bytes_tensor(buffer: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """Parse ``count`` length-prefixed elements; every byte of ``buffer`` must be used."""
    view = memoryview(buffer)
    items: list[bytes] = []
    offset = 0
    end = len(view)
    unpack = struct.Struct("<I").unpack_from
    for _ in range(count):
        if offset + 4 > end:
            raise InvalidArgument(
                f"unexpected number of string elements for inference input '{name}', "
                f"expecting {count}, got {len(items)}"
            )
        (length,) = unpack(view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidArgument(
                f"element {len(items)} of BYTES input '{name}' claims {length} bytes but only "
                f"{end - offset} remain in the buffer"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != end:
        raise InvalidArgument(
            f"unexpected number of string elements for inference input '{name}', expecting "
            f"{count}, got more ({end - offset} bytes left over)"
        )
    array = np.empty(count, dtype=np.object_)
    array[:] = items
    return array


def to_wire_bytes(array: np.ndarray, datatype: str) -> bytes | memoryview:
    """Raw little-endian bytes of a tensor, without copying when the array is contiguous."""
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    wire = WIRE_DTYPES[datatype]
    if array.dtype != wire:
        array = array.astype(wire)
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    if not array.size:  # (memoryview cannot cast a view with a zero in its shape)
        return b""
    return memoryview(array.data).cast("B")


def from_wire_bytes(
    buffer: bytes | memoryview, datatype: str, shape: Sequence[int], name: str
) -> np.ndarray:
    """Decode raw bytes of ``shape`` × ``datatype`` (zero-copy for fixed-size types)."""
    count = element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes_tensor(buffer, count, name).reshape(shape)
    if datatype == "BF16":
        raise InvalidArgument(f"datatype BF16 of input '{name}' is not supported by naiad")
    expected = count * ITEM_SIZES[datatype]
    if len(buffer) != expected:
        raise InvalidArgument(
            f"input byte size mismatch for input '{name}', expecting {expected} bytes "
            f"({datatype} {list(shape)}), got {len(buffer)}"
        )
    array = np.frombuffer(buffer, dtype=WIRE_DTYPES[datatype])
    if datatype == "BOOL":
        array = array.view(np.bool_)
    return array.reshape(shape)


def byte_size(array: np.ndarray, datatype: str) -> int:
    if datatype == "BYTES":
        total = 0
        for item in array.reshape(-1):
            if isinstance(item, str):
                item = item.encode("utf-8")
            total += 4 + len(item)
        return total
    return array.size * ITEM_SIZES[datatype]


# ---------------------------------------------------------------------------- model signatures
# What a framework says about a model's tensors, checked against (or filled into) the config the
# same way by every backend that can read a signature (TensorFlow SavedModel, torch.export, ...).


@dataclass(frozen=True, slots=True)
class ModelTensor:
    """An input or output as the framework describes it."""

    name: str
    #: protocol datatype (``"FP32"``, ``"BYTES"``, ...); ``""`` when Triton has no equivalent
    datatype: str
    #: sizes, -1 for a variable one; None when the framework does not know the rank
    dims: tuple[int, ...] | None

    @property
    def batchable(self) -> bool:
        """Rank >= 1 with a variable first dimension, which a batch dimension needs."""
        return self.dims is not None and len(self.dims) > 0 and self.dims[0] == -1


def config_datatype(io: Any) -> str:
    """The ``TYPE_*`` name of a ModelInput / ModelOutput's ``data_type``."""
    enum = io.DESCRIPTOR.fields_by_name["data_type"].enum_type
    return enum.values_by_number[io.data_type].name


def check_config_tensor(
    model: str, kind: str, io: Any, tensor: ModelTensor, max_batch_size: int, framework: str
) -> None:
    """Raise :class:`ModelLoadError` unless the config entry ``io`` can describe ``tensor``.

    ``kind`` is ``"input"`` or ``"output"``; ``framework`` names the model kind in messages.
    Datatypes must be equal. Shapes compare ``reshape.shape`` (else ``dims``), with the batch
    dimension prepended when ``max_batch_size > 0``, which the model must have as a variable
    first dimension; ranks must be equal and each fixed model size must equal the config's (a
    model's -1 matches anything). A model scalar matches ``dims: [1]`` without batching, and a
    tensor of unknown rank matches any shape.
    """
    want = protocol_to_config(tensor.datatype) if tensor.datatype else "TYPE_INVALID"
    got = config_datatype(io)
    if got != want:
        raise ModelLoadError(
            f"model '{model}': {kind} '{tensor.name}' has data_type {got} in the configuration "
            f"but the {framework} model expects {want}"
        )
    if tensor.dims is None:
        return
    model_dims = list(tensor.dims)
    dims = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
    if max_batch_size > 0 and not tensor.batchable:
        raise ModelLoadError(
            f"model '{model}': max_batch_size is {max_batch_size} but {kind} '{tensor.name}' has "
            f"no variable-size first (batch) dimension in the {framework} model: shape "
            f"{model_dims}"
        )
    if not model_dims and max_batch_size == 0 and dims in ([], [1]):
        return
    full = ([-1] if max_batch_size > 0 else []) + dims
    if len(full) != len(model_dims) or any(
        m not in (-1, c) for m, c in zip(model_dims, full, strict=True)
    ):
        raise ModelLoadError(
            f"model '{model}': {kind} '{tensor.name}' has shape {model_dims} in the {framework} "
            f"model but the configuration gives {full}"
            + (" (batch dimension first)" if max_batch_size > 0 else "")
        )


def fill_config_tensor(io: Any, tensor: ModelTensor, max_batch_size: int) -> None:
    """Fill ``data_type`` (when unset) and ``dims`` (when empty) of ``io`` from ``tensor``.

    Dims drop the batch dimension when ``max_batch_size > 0``; a scalar (per batch item) becomes
    ``dims: [1]`` with ``reshape { shape: [] }``. Raises :class:`ModelLoadError` for a datatype
    Triton has no name for, or an unknown rank (such a tensor must be described in the config).
    """
    if config_datatype(io) == "TYPE_INVALID":
        if not tensor.datatype:
            raise ModelLoadError(
                f"tensor '{tensor.name}' has a datatype naiad cannot serve; describe it in the "
                "configuration or change the model"
            )
        enum = io.DESCRIPTOR.fields_by_name["data_type"].enum_type
        io.data_type = enum.values_by_name[protocol_to_config(tensor.datatype)].number
    if len(io.dims) or io.HasField("reshape"):
        return
    if tensor.dims is None:
        raise ModelLoadError(
            f"the rank of tensor '{tensor.name}' is unknown in the model; give its dims in the "
            "configuration"
        )
    dims = list(tensor.dims[1:] if max_batch_size > 0 else tensor.dims)
    if dims:
        io.dims.extend(dims)
    else:
        io.dims.append(1)
        io.reshape.SetInParent()
