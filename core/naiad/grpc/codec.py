"""ModelInferRequest to :class:`~naiad.inference.InferRequest` and back, as Triton's gRPC frontend.

Pure functions, no grpc here. Tensor bytes go through the same helpers as HTTP
(:func:`~naiad.tensors.from_wire_bytes` over ``raw_input_contents``: one ``numpy.frombuffer`` per
input, BYTES with their 4-byte length prefixes; :func:`~naiad.tensors.to_wire_bytes` for
``raw_output_contents``), shared memory through the request's :class:`~naiad.shm.ShmLease`.
The messages and their rules: ``docs/grpc.md`` and Triton's ``infer_handler.cc``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import InvalidArgument, Unsupported
from ..inference import InferRequest, InferResponse, RequestedOutput, parse_model_version
from ..tensors import NUMPY_DTYPES, WIRE_DTYPES, from_wire_bytes, to_wire_bytes
from . import grpc_service_pb2 as pb

ShmReader = Callable[[str, int, int], memoryview]
ShmWriter = Callable[[str, int, int, "bytes | memoryview", str], None]

#: the one ``triton_*`` request parameter a client may send
EMPTY_FINAL = "triton_enable_empty_final_response"
#: datatype -> the InferTensorContents field that carries it
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
#: InferTensorContents field -> the datatype Triton names it by in errors, and its numpy dtype
_FIELD_TYPE = {
    "bool_contents": ("BOOL", np.bool_),
    "int_contents": ("INT32", np.int32),
    "int64_contents": ("INT64", np.int64),
    "uint_contents": ("UINT32", np.uint32),
    "uint64_contents": ("UINT64", np.uint64),
    "fp32_contents": ("FP32", np.float32),
    "fp64_contents": ("FP64", np.float64),
    "bytes_contents": ("BYTES", np.object_),
}


# ---- parameters ---------------------------------------------------------------------------------


def _value(p: pb.InferParameter) -> tuple[str | None, Any]:
    which = p.WhichOneof("parameter_choice")
    return which, (getattr(p, which) if which is not None else None)


def _type_error(key: str, expected: str) -> InvalidArgument:
    return InvalidArgument(f"invalid value type for '{key}' parameter, expected {expected}.")


def apply_parameters(request: InferRequest, params: Mapping[str, pb.InferParameter]) -> bool:
    """Set the request fields Triton reads from ``parameters``; the rest become custom
    parameters. Returns whether the client asked for empty final responses (streams)."""
    empty_final = False
    for key, p in params.items():
        which, value = _value(p)
        if key == "sequence_id":
            if which == "int64_param" and value >= 0:
                request.sequence_id = value
            elif which == "string_param":
                request.sequence_id = value
            else:
                raise _type_error(key, "int64_param or string_param")
        elif key in ("sequence_start", "sequence_end", EMPTY_FINAL):
            if which != "bool_param":
                raise _type_error(key, "bool_param")
            if key == EMPTY_FINAL:
                empty_final = value
            else:
                setattr(request, key, value)
        elif key == "priority":
            if which not in ("int64_param", "uint64_param"):
                raise _type_error(key, "int64_param or uint64_param")
            if value < 0:
                raise InvalidArgument("invalid value for 'priority', expected value >= 0.")
            request.priority = value
        elif key == "timeout":
            if which != "int64_param":
                raise _type_error(key, "int64_param")
            if value < 0:
                raise InvalidArgument("invalid value for 'timeout', expected value >= 0.")
            request.timeout_us = value
        elif key.startswith("triton_"):
            raise InvalidArgument(
                "parameter keys starting with 'triton_' are reserved for Triton usage. Only the "
                f"following keys starting with 'triton_' are allowed: {EMPTY_FINAL}"
            )
        elif which in ("int64_param", "bool_param", "string_param", "double_param"):
            request.parameters[key] = value
        else:
            raise _type_error(key, "int64_param, bool_param, or string_param")
    return empty_final


def _shm_params(
    params: Mapping[str, pb.InferParameter], tensor: str
) -> tuple[str, int, int] | None:
    """``(region, byte_size, offset)`` of a tensor placed in shared memory, else None."""
    region = params.get("shared_memory_region")
    size = params.get("shared_memory_byte_size")
    offset = params.get("shared_memory_offset")
    if region is None:
        for key, given in (("shared_memory_offset", offset), ("shared_memory_byte_size", size)):
            if given is not None:
                raise InvalidArgument(
                    f"'{key}' can not be specified without 'shared_memory_region' parameter "
                    f"for tensor '{tensor}'"
                )
        return None
    which, name = _value(region)
    if which != "string_param":
        raise InvalidArgument(
            "invalid value type for 'shared_memory_region' parameter for tensor "
            f"'{tensor}', expected string_param."
        )
    if size is None:
        raise InvalidArgument(
            "'shared_memory_byte_size' must be specified along with 'shared_memory_region' "
            f"parameter for tensor '{tensor}'"
        )
    byte_size = _int64(size, "shared_memory_byte_size", tensor)
    start = _int64(offset, "shared_memory_offset", tensor) if offset is not None else 0
    return name, byte_size, start


def _int64(p: pb.InferParameter, key: str, tensor: str) -> int:
    which, value = _value(p)
    if which != "int64_param":
        raise InvalidArgument(
            f"invalid value type for '{key}' parameter for tensor '{tensor}', expected int64_param."
        )
    return value


# ---- requests -----------------------------------------------------------------------------------

#: BYTES tensors with more wire bytes (or typed values) than this are converted off the loop
COSTLY = 1 << 16


def costly_request(msg: pb.ModelInferRequest) -> bool:
    """Whether decoding takes long enough to belong off the event loop: typed ``contents``
    (converted value by value) or a big raw BYTES input (split element by element). Requests
    that read shared memory stay on the loop, which owns the region bookkeeping."""
    inputs = msg.inputs
    if any(t.parameters for t in inputs):
        return False
    raw = msg.raw_input_contents
    if not raw:
        return any(t.HasField("contents") for t in inputs)
    return any(
        t.datatype == "BYTES" and i < len(raw) and len(raw[i]) > COSTLY
        for i, t in enumerate(inputs)
    )


def parse_infer_request(
    msg: pb.ModelInferRequest, shm_reader: ShmReader | None = None
) -> tuple[InferRequest, bool]:
    """The request, and whether it asked for empty final responses.

    Each input's data comes from shared memory, typed ``contents`` or the next unused entry of
    ``raw_input_contents``, in that order of precedence, as in Triton.
    """
    model = msg.model_name
    request = InferRequest(model, parse_model_version(msg.model_version), msg.id)
    empty_final = apply_parameters(request, msg.parameters) if msg.parameters else False
    raw = msg.raw_input_contents
    next_raw = 0
    inputs = request.inputs
    for tensor in msg.inputs:
        name = tensor.name
        datatype = tensor.datatype
        shape = list(tensor.shape)
        if datatype not in NUMPY_DTYPES and datatype != "BF16":
            raise InvalidArgument(
                f"invalid datatype '{datatype}' of input '{name}' for model '{model}'"
            )
        if any(d < 0 for d in shape):
            raise InvalidArgument(
                f"unexpected shape for input '{name}' for model '{model}': dimensions must "
                f"be >= 0, got {shape}"
            )
        if name in inputs:
            raise InvalidArgument(f"input '{name}' already exists in request")
        shm = _shm_params(tensor.parameters, name) if tensor.parameters else None
        if shm is not None:
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    "unexpected 'content' provided when using shared memory for input tensor "
                    f"'{name}' for model '{model}'"
                )
            if shm_reader is None:
                raise InvalidArgument(f"shared memory is not enabled for input '{name}'")
            region, size, offset = shm
            data = shm_reader(region, offset, size)
            inputs[name] = from_wire_bytes(data, datatype, shape, name)
        elif tensor.HasField("contents"):
            if raw:
                raise InvalidArgument(
                    "contents field must not be specified when using raw_input_contents for "
                    f"'{name}' for model '{model}'"
                )
            inputs[name] = _typed_contents(tensor.contents, datatype, shape, name, model)
        elif next_raw < len(raw):
            inputs[name] = from_wire_bytes(raw[next_raw], datatype, shape, name)
            next_raw += 1
        else:
            raise InvalidArgument(
                f"unable to find data for input tensor '{name}' for model '{model}' in request."
            )
    if msg.outputs:
        request.outputs = [_parse_output(o) for o in msg.outputs]
    return request, empty_final


def _typed_contents(
    contents: pb.InferTensorContents, datatype: str, shape: list[int], name: str, model: str
) -> np.ndarray:
    fields = [(fd.name, values) for fd, values in contents.ListFields()]
    if not fields:
        return from_wire_bytes(b"", datatype, shape, name)
    if len(fields) > 1:
        raise InvalidArgument(
            f"unexpected explicit tensor data for input tensor '{name}' for model '{model}', "
            "binary data was already supplied."
        )
    field, values = fields[0]
    if _CONTENTS_FIELD.get(datatype) != field:
        raise InvalidArgument(
            f"unexpected explicit tensor data for input tensor '{name}' for model '{model}' of "
            f"type '{_FIELD_TYPE[field][0]}', expected datatype '{datatype}'"
        )
    if datatype == "BYTES":
        count = int(np.prod(shape, dtype=np.int64))
        if len(values) != count:
            raise InvalidArgument(
                f"unexpected number of string elements for inference input '{name}', "
                f"expecting {count}, got {len(values)}"
            )
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    # INT8/INT16 (and UINT8/UINT16) keep the low bytes of each value, as Triton's copy does
    flat = np.array(values, dtype=_FIELD_TYPE[field][1]).astype(WIRE_DTYPES[datatype])
    return from_wire_bytes(flat.data.cast("B"), datatype, shape, name)


def _parse_output(tensor: pb.ModelInferRequest.InferRequestedOutputTensor) -> RequestedOutput:
    out = RequestedOutput(tensor.name, binary=True)
    params = tensor.parameters
    if not params:
        return out
    out.shm = _shm_params(params, tensor.name)
    if "classification" in params:
        which, value = _value(params["classification"])
        if which != "int64_param":
            raise InvalidArgument(
                "invalid value type for 'classification' parameter, expected int64_param"
            )
        if value <= 0:
            raise InvalidArgument("invalid value for 'classification' parameter, expected >= 0")
        if out.shm is not None:
            raise InvalidArgument(
                "output can't set both 'shared_memory_region' and 'classification'"
            )
        out.class_count = value
    return out


# ---- responses ----------------------------------------------------------------------------------


def costly_response(response: InferResponse) -> bool:
    """Whether encoding belongs off the event loop: a big BYTES output (joined element by
    element)."""
    return any(a.dtype == np.object_ and a.size > COSTLY // 16 for a in response.outputs.values())


def _parameter(value: Any) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    if isinstance(value, str):
        return pb.InferParameter(string_param=value)
    raise Unsupported(
        f"Response parameter of type '{type(value).__name__}' is not currently supported"
    )


def encode_infer_response(
    request: InferRequest, response: InferResponse, shm_writer: ShmWriter | None = None
) -> pb.ModelInferResponse:
    """The response message: one ``outputs`` entry and one ``raw_output_contents`` entry per
    output, index-aligned (an output written to shared memory gets an empty raw entry)."""
    wanted = {o.name: o for o in request.outputs} if request.outputs else None
    tensors = []
    raw = []
    Tensor = pb.ModelInferResponse.InferOutputTensor
    for name, array in response.outputs.items():
        datatype = response.datatypes[name]
        tensors.append(Tensor(name=name, datatype=datatype, shape=array.shape))
        data = to_wire_bytes(array, datatype)
        spec = wanted.get(name) if wanted is not None else None
        if spec is not None and spec.shm is not None:
            if shm_writer is None:
                raise InvalidArgument("shared memory is not enabled")
            region, size, offset = spec.shm
            shm_writer(region, offset, size, data, name)
            raw.append(b"")
        else:
            raw.append(data if isinstance(data, bytes) else data.tobytes())
    msg = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=str(response.model_version),
        id=response.id,
        outputs=tensors,
        raw_output_contents=raw,
    )
    if response.parameters:
        for key, value in response.parameters.items():
            msg.parameters[key].CopyFrom(_parameter(value))
    return msg
