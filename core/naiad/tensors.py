"""Datatypes and tensor encodings shared by every transport and every backend.

Three names exist for each datatype: the protocol name (``"FP32"``), the ModelConfig enum name
(``"TYPE_FP32"``) and a numpy dtype. BYTES tensors are numpy ``object`` arrays of ``bytes``; on the
wire each element is a 4-byte little-endian length followed by the bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from .errors import InvalidArgument

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
    return memoryview(array).cast("B")


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
