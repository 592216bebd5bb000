"""ModelInferRequest to :class:`~naiad.inference.InferRequest` and back, as Triton's gRPC frontend.

Pure functions, no grpc here. Tensor bytes go through the same helpers as HTTP
(:func:`~naiad.tensors.from_wire_bytes` over ``raw_input_contents``: one ``numpy.frombuffer`` per
input, BYTES with their 4-byte length prefixes; :func:`~naiad.tensors.to_wire_bytes` for
``raw_output_contents``), shared memory through the request's :class:`~naiad.shm.ShmLease`.
The messages and their rules: ``docs/grpc.md`` and Triton's ``infer_handler.cc``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidArgument, Unsupported
from ..inference import InferRequest, InferResponse, RequestedOutput, parse_model_version
from ..plans import PLAN_HEADER_MAX, BinaryPlan, plannable
from ..tensors import NUMPY_DTYPES, WIRE_DTYPES, from_wire_bytes, to_wire_bytes
from . import grpc_service_pb2 as pb

ShmReader = Callable[[str, int, int], memoryview]
RawContents = Sequence[bytes | memoryview]
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


# ---- the wire ------------------------------------------------------------------------------------
# protobuf's runtime copies a ``bytes`` field twice on parsing (into its arena, then into the
# Python ``bytes`` each access makes) and twice on serializing; for tensors of hundreds of KB
# that is most of a request's cost. The lean front splits ``raw_input_contents`` off the wire
# bytes itself (:func:`split_infer_request`) and writes ``raw_output_contents`` around the
# output arrays' own memory (:func:`encode_infer_response_wire`).

#: ModelInferRequest.raw_input_contents: field 7, length-delimited
_RAW_INPUT_TAG = 7 << 3 | 2
#: ModelInferResponse.raw_output_contents: field 6, length-delimited
_RAW_OUTPUT_TAG = bytes((6 << 3 | 2,))
#: raw outputs up to this size are copied into the message's other bytes (one write piece)
_INLINE = 1 << 12
#: requests up to this size are split from a copy (their tensors are copied, not viewed)
_INLINE_WALK = 1 << 14


def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """A protobuf varint at ``pos``: (value, the position after it)."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class SplitRequest:
    """A ModelInferRequest as :func:`split_infer_request` parsed it: the message without its
    raw contents, and those (None: they are in the message). ``key``: the bytes of the other
    fields when short enough to look up a :class:`RawPlan` by. The RPC answers one with the
    serialized response (:class:`WireMessage`)."""

    __slots__ = ("msg", "raw", "key")

    def __init__(
        self,
        msg: pb.ModelInferRequest,
        raw: list[bytes | memoryview] | None,
        key: bytes | None = None,
    ) -> None:
        self.msg = msg
        self.raw = raw
        self.key = key


class RawPlan(BinaryPlan):
    """The edge's plan of a binary request (:mod:`naiad.plans`) for a gRPC ModelInfer:
    a message whose fields but ``raw_input_contents`` were seen before is not parsed or
    validated again; its tensors are the raw entries, in the order of its inputs."""

    __slots__ = ("specs", "bytes_at")

    def __init__(self, request: InferRequest, specs: tuple[tuple[str, str, list[int]], ...]):
        # the template keeps its own parameters (forwarded headers are added to the request's)
        super().__init__(dataclasses.replace(request, parameters=dict(request.parameters)), (), 0)
        self.specs = specs
        self.bytes_at = tuple(i for i, spec in enumerate(specs) if spec[1] == "BYTES")

    def costly(self, raw: RawContents) -> bool:
        """:func:`costly_request` of a request of this plan."""
        return any(len(raw[i]) > COSTLY for i in self.bytes_at)

    def build_raw(self, raw: RawContents) -> InferRequest:
        """The request of these fields with ``raw`` (one entry per input) as its tensors."""
        t = self.template
        request = self.build(memoryview(b""), t.model_name, t.model_version)
        inputs = request.inputs
        for (name, datatype, shape), data in zip(self.specs, raw, strict=True):
            inputs[name] = from_wire_bytes(data, datatype, shape, name)
        return request


def plan_of(split: SplitRequest, request: InferRequest) -> RawPlan | None:
    """A plan for requests like ``request`` (parsed from ``split``): every input raw, no
    parameters on the inputs, no sequence, no shared memory."""
    msg, raw = split.msg, split.raw
    if split.key is None or raw is None or len(raw) != len(msg.inputs):
        return None
    if any(t.parameters or t.HasField("contents") for t in msg.inputs):
        return None
    if not plannable(request):
        return None
    return RawPlan(request, tuple((t.name, t.datatype, list(t.shape)) for t in msg.inputs))


#: where the raw contents lay in small messages walked before, by the message's size: the
#: bytes around them (the other fields and the raw contents' tags and lengths), where each raw
#: entry starts and ends, the other fields' bytes (``head``) and the plan key
_LAYOUTS: dict[int, tuple[tuple[tuple[int, bytes], ...], tuple[tuple[int, int], ...], bytes]] = {}
_LAYOUTS_MAX = 64


def split_infer_request(data: bytes | memoryview) -> SplitRequest:
    """A ModelInferRequest from its wire bytes, with its ``raw_input_contents`` left out of the
    message as views of ``data``.

    The other fields are parsed by protobuf, in their order on the wire, so the message is the
    one ``FromString(data)`` gives but for the raw contents; a message this walk cannot follow
    (groups, a length past the end) is parsed whole, raising what ``FromString`` raises.

    A small message whose bytes but its raw contents are those of one walked before (a client
    in a loop sends the same fields, the tensors' values aside) is not walked again: the walk
    reads only those bytes, so it would find the raw contents where it found them then.
    """
    # a small message is walked (and its small pieces sliced) as bytes: faster than a view
    if len(data) <= _INLINE_WALK:
        data = bytes(data)
        layout = _LAYOUTS.get(len(data))
        if layout is not None:
            around, spans, known = layout
            if all(data.startswith(piece, at) for at, piece in around):
                raws: list[bytes | memoryview] = [data[i:j] for i, j in spans]
                key = known if len(known) <= PLAN_HEADER_MAX else None
                return SplitRequest(pb.ModelInferRequest.FromString(known), raws, key)
    else:
        data = memoryview(data)
    raw: list[bytes | memoryview] = []
    spans_seen: list[tuple[int, int]] = []
    rest: list[bytes | memoryview] = []
    pos, end, start = 0, len(data), 0
    try:
        while pos < end:
            field = pos
            tag = data[pos]
            if tag < 0x80:
                pos += 1
            else:
                tag, pos = _varint(data, pos)
            kind = tag & 7
            if kind == 2:
                n = data[pos]
                if n < 0x80:
                    pos += 1
                else:
                    n, pos = _varint(data, pos)
                if pos + n > end:
                    raise ValueError("truncated")
                if tag == _RAW_INPUT_TAG:
                    if field > start:
                        rest.append(data[start:field])
                    raw.append(data[pos : pos + n])
                    spans_seen.append((pos, pos + n))
                    start = pos + n
                pos += n
            elif kind == 0:
                pos = _varint(data, pos)[1]
            elif kind == 1:
                pos += 8
            elif kind == 5:
                pos += 4
            else:
                raise ValueError("group")
        if pos != end:
            raise ValueError("truncated")
    except (ValueError, IndexError):
        raw = []
    if not raw:
        return SplitRequest(pb.ModelInferRequest.FromString(data), None)
    if start < end:
        rest.append(data[start:end])
    head = rest[0] if len(rest) == 1 else b"".join(rest)
    key = (
        (head if isinstance(head, bytes) else bytes(head)) if len(head) <= PLAN_HEADER_MAX else None
    )
    msg = pb.ModelInferRequest.FromString(head)
    if isinstance(data, bytes):
        at, between = 0, []
        for i, j in spans_seen:
            between.append((at, data[at:i]))
            at = j
        between.append((at, data[at:]))
        if len(_LAYOUTS) >= _LAYOUTS_MAX:
            _LAYOUTS.clear()
        _LAYOUTS[len(data)] = (tuple(between), tuple(spans_seen), bytes(head))
    return SplitRequest(msg, raw, key)


class WireMessage:
    """A message serialized in pieces (the raw outputs' own memory among them), as the lean
    front writes it."""

    __slots__ = ("pieces",)

    def __init__(self, pieces: list[bytes | memoryview]) -> None:
        self.pieces = pieces


# ---- requests -----------------------------------------------------------------------------------

#: BYTES tensors with more wire bytes (or typed values) than this are converted off the loop
COSTLY = 1 << 16


def costly_request(msg: pb.ModelInferRequest, raw: RawContents | None = None) -> bool:
    """Whether decoding takes long enough to belong off the event loop: typed ``contents``
    (converted value by value) or a big raw BYTES input (split element by element). Requests
    that read shared memory stay on the loop, which owns the region bookkeeping. ``raw``: the
    ``raw_input_contents`` when they were split off the message (:func:`split_infer_request`).
    """
    inputs = msg.inputs
    if any(t.parameters for t in inputs):
        return False
    if raw is None:
        raw = msg.raw_input_contents
    if not raw:
        return any(t.HasField("contents") for t in inputs)
    return any(
        t.datatype == "BYTES" and i < len(raw) and len(raw[i]) > COSTLY
        for i, t in enumerate(inputs)
    )


def parse_infer_request(
    msg: pb.ModelInferRequest,
    shm_reader: ShmReader | None = None,
    raw: RawContents | None = None,
) -> tuple[InferRequest, bool]:
    """The request, and whether it asked for empty final responses.

    Each input's data comes from shared memory, typed ``contents`` or the next unused entry of
    ``raw_input_contents`` (or of ``raw``, when they were split off the message: the arrays
    are then views of those buffers), in that order of precedence, as in Triton.
    """
    model = msg.model_name
    request = InferRequest(model, parse_model_version(msg.model_version), msg.id)
    empty_final = apply_parameters(request, msg.parameters) if msg.parameters else False
    if raw is None:
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
    msg, raw = _response_parts(request, response, shm_writer)
    msg.raw_output_contents.extend(d if isinstance(d, bytes) else d.tobytes() for d in raw)
    return msg


def encode_infer_response_wire(
    request: InferRequest, response: InferResponse, shm_writer: ShmWriter | None = None
) -> WireMessage:
    """:func:`encode_infer_response`'s message, serialized: the same bytes protobuf writes
    (``raw_output_contents``, the last field, appended by hand), each output's data the
    array's own memory. The other fields' bytes are kept by what they are made of (a model
    answering a loop of requests gives the same names, datatypes and shapes each time)."""
    raw = _raw_outputs(request, response, shm_writer)
    head = None
    key: tuple | None = None
    if not response.parameters:
        key = (response.model_name, response.model_version, response.id)
        key += tuple((n, response.datatypes[n], a.shape) for n, a in response.outputs.items())
        head = _HEADS.get(key)
    if head is None:
        head = _response_message(response).SerializeToString()
        if key is not None:
            if len(_HEADS) >= _HEADS_MAX:
                _HEADS.clear()
            _HEADS[key] = head
    pieces: list[bytes | memoryview] = []
    small = bytearray(head)
    for data in raw:
        small += _RAW_OUTPUT_TAG
        small += _varint_bytes(len(data))
        if len(data) <= _INLINE:
            small += data
        else:
            pieces.append(bytes(small))
            pieces.append(data)
            small = bytearray()
    if small or not pieces:
        pieces.append(bytes(small))
    return WireMessage(pieces)


#: serialized response fields but the raw contents, by (model, version, id, outputs' names,
#: datatypes and shapes), for responses without parameters
_HEADS: dict[tuple, bytes] = {}
_HEADS_MAX = 256


def _response_parts(
    request: InferRequest, response: InferResponse, shm_writer: ShmWriter | None
) -> tuple[pb.ModelInferResponse, list[bytes | memoryview]]:
    """The response message without its raw contents, and those contents."""
    raw = _raw_outputs(request, response, shm_writer)
    return _response_message(response), raw


def _raw_outputs(
    request: InferRequest, response: InferResponse, shm_writer: ShmWriter | None
) -> list[bytes | memoryview]:
    """Each output's ``raw_output_contents`` entry (empty when written to shared memory)."""
    wanted = {o.name: o for o in request.outputs} if request.outputs else None
    raw: list[bytes | memoryview] = []
    for name, array in response.outputs.items():
        data = to_wire_bytes(array, response.datatypes[name])
        spec = wanted.get(name) if wanted is not None else None
        if spec is not None and spec.shm is not None:
            if shm_writer is None:
                raise InvalidArgument("shared memory is not enabled")
            region, size, offset = spec.shm
            shm_writer(region, offset, size, data, name)
            raw.append(b"")
        else:
            raw.append(data)
    return raw


def _response_message(response: InferResponse) -> pb.ModelInferResponse:
    """The response message without its raw contents."""
    Tensor = pb.ModelInferResponse.InferOutputTensor
    msg = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=str(response.model_version),
        id=response.id,
        outputs=[
            Tensor(name=name, datatype=response.datatypes[name], shape=array.shape)
            for name, array in response.outputs.items()
        ],
    )
    if response.parameters:
        for key, value in response.parameters.items():
            msg.parameters[key].CopyFrom(_parameter(value))
    return msg
