"""The legacy TRTIS v1 wire forms: ``NV-InferRequest`` to an InferRequest, a response back to
``NV-InferResponse`` and raw bytes, and the ``ServerStatus`` of ``/api/status``.

Pure functions over the data plane's objects, no aiohttp (like :mod:`naiad.http.codec`): the v1
API builds the same :class:`~naiad.inference.InferRequest` the V2 API does and hands it to the
same :meth:`DataPlane.infer <naiad.dataplane.DataPlane.infer>`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from google.protobuf import json_format, text_format
from google.protobuf.message import Message

from ..dataplane import DataPlane, top_classes
from ..errors import InvalidArgument
from ..inference import InferRequest, InferResponse, RequestedOutput
from ..legacy_pb import (
    InferRequestHeader,
    InferResponseHeader,
    ModelReadyState,
    ModelStatus,
    ServerReadyState,
    ServerStatus,
    SharedMemoryStatus,
)
from ..models import ModelState, ModelVersion
from ..shm import ShmLease
from ..stats import Duration
from ..tensors import ITEM_SIZES, element_count, from_wire_bytes, to_wire_bytes

_START = InferRequestHeader.FLAG_SEQUENCE_START
_END = InferRequestHeader.FLAG_SEQUENCE_END

_READY_STATES = {
    ModelState.UNKNOWN: ModelReadyState.MODEL_UNKNOWN,
    ModelState.READY: ModelReadyState.MODEL_READY,
    ModelState.LOADING: ModelReadyState.MODEL_LOADING,
    ModelState.UNLOADING: ModelReadyState.MODEL_UNLOADING,
    ModelState.UNAVAILABLE: ModelReadyState.MODEL_UNAVAILABLE,
}


class MalformedHeader(ValueError):
    """``NV-InferRequest`` is missing or not a text-format InferRequestHeader (TRTIS: bare 400)."""


def parse_request_header(text: str | None) -> InferRequestHeader:
    if text is None:
        raise MalformedHeader("missing NV-InferRequest header")
    try:
        return text_format.Parse(text, InferRequestHeader())
    except text_format.ParseError as exc:
        raise MalformedHeader(str(exc)) from exc


def short_text(message: Message) -> str:
    """Protobuf short text (``ShortDebugString``), the form of the ``NV-*`` headers."""
    return text_format.MessageToString(message, as_one_line=True)


def serialize(message: Message, form: str) -> tuple[bytes, str]:
    """``message`` as ``binary``, ``json`` (protobuf's JSON printer) or ``text``, + its type."""
    if form == "binary":
        return message.SerializeToString(), "application/octet-stream"
    if form == "json":
        return json_format.MessageToJson(message, indent=None).encode(), "application/json"
    return text_format.MessageToString(message).encode(), "text/plain"


# ---- inference ----------------------------------------------------------------------------------


def build_request(
    header: InferRequestHeader,
    body: bytes,
    mv: ModelVersion,
    model_name: str,
    model_version: int,
    lease: ShmLease,
) -> InferRequest:
    """The InferRequest of a v1 request: inputs from ``body`` (in header order) or shm."""
    sig = mv.signature
    assert sig is not None
    batching = sig.max_batch_size > 0
    batch = header.batch_size
    if batch < 1:
        raise InvalidArgument(f"inference request batch-size must be >= 1 for '{model_name}'")
    if not batching and batch != 1:
        raise InvalidArgument(
            f"inference request batch-size must be 1 for '{model_name}', which does not batch"
        )
    request = InferRequest(model_name, model_version, binary_output=True)
    if header.id:
        request.id = str(header.id)
    if header.correlation_id:
        request.sequence_id = header.correlation_id
    request.sequence_start = bool(header.flags & _START)
    request.sequence_end = bool(header.flags & _END)
    view = memoryview(body)
    offset = 0
    for item in header.input:
        spec = sig.inputs.get(item.name)
        if spec is None:
            raise InvalidArgument(
                f"unexpected inference input '{item.name}' for model '{model_name}'"
            )
        if item.name in request.inputs:
            raise InvalidArgument(f"input '{item.name}' already exists in request")
        dims = list(item.dims) if item.dims else list(spec.dims)
        if any(d < 0 for d in dims):
            raise InvalidArgument(
                f"input '{item.name}' of model '{model_name}' has variable-size dims "
                f"{list(spec.dims)}: give its 'dims' in the NV-InferRequest header"
            )
        shape = ([batch] if batching else []) + dims
        if item.HasField("shared_memory"):
            shm = item.shared_memory
            data = lease.read(shm.name, shm.offset, shm.byte_size)
        else:
            size = _input_size(item, spec.datatype, shape, model_name)
            if offset + size > len(view):
                raise InvalidArgument(
                    f"unexpected size for input '{item.name}', expecting {size} bytes but only "
                    f"{len(view) - offset} bytes of input data remain for model '{model_name}'"
                )
            data = view[offset : offset + size]
            offset += size
        request.inputs[item.name] = from_wire_bytes(data, spec.datatype, shape, item.name)
    if offset != len(view):
        raise InvalidArgument(f"unexpected additional input data for model '{model_name}'")
    outputs = []
    for out in header.output:
        wanted = RequestedOutput(out.name, binary=True)
        if out.HasField("shared_memory"):
            if out.HasField("cls"):
                raise InvalidArgument(
                    f"output '{out.name}' cannot combine shared memory with classification"
                )
            shm = out.shared_memory
            wanted.shm = (shm.name, shm.byte_size, shm.offset)
        outputs.append(wanted)
    request.outputs = outputs or None
    return request


def _input_size(item: InferRequestHeader.Input, datatype: str, shape: list[int], model: str) -> int:
    if datatype == "BYTES":
        if not item.batch_byte_size:
            raise InvalidArgument(
                f"'batch_byte_size' must be given for STRING input '{item.name}' of model '{model}'"
            )
        return item.batch_byte_size
    expected = element_count(shape) * ITEM_SIZES[datatype]
    if item.batch_byte_size and item.batch_byte_size != expected:
        raise InvalidArgument(
            f"input byte size mismatch for input '{item.name}', expecting {expected} bytes "
            f"({datatype} {shape}), got {item.batch_byte_size}"
        )
    return expected


def encode_response(
    header: InferRequestHeader,
    request: InferRequest,
    response: InferResponse,
    mv: ModelVersion,
    write_shm: Callable[[str, int, int, bytes | memoryview, str], None],
) -> tuple[InferResponseHeader, list[bytes | memoryview]]:
    """The NV-InferResponse header and the raw output blobs, for the outputs the header lists."""
    sig = mv.signature
    assert sig is not None
    batching = sig.max_batch_size > 0
    out_header = InferResponseHeader(
        model_name=request.model_name,
        model_version=mv.version,
        batch_size=header.batch_size,
        id=header.id,
    )
    blobs: list[bytes | memoryview] = []
    for wanted in header.output:
        array = response.outputs[wanted.name]
        entry = out_header.output.add(name=wanted.name)
        if wanted.HasField("cls"):
            _classes(entry, array, wanted.cls.count, batching, mv.labels.get(wanted.name))
            continue
        wire = to_wire_bytes(array, response.datatypes[wanted.name])
        entry.raw.dims.extend(array.shape[1:] if batching else array.shape)
        entry.raw.batch_byte_size = len(wire) if isinstance(wire, bytes) else wire.nbytes
        if wanted.HasField("shared_memory"):
            shm = wanted.shared_memory
            write_shm(shm.name, shm.offset, shm.byte_size, wire, wanted.name)
        else:
            blobs.append(wire)
    return out_header, blobs


def _classes(
    entry: InferResponseHeader.Output,
    array: np.ndarray,
    count: int,
    batching: bool,
    labels: list[str] | None,
) -> None:
    for top in top_classes(array, max(count, 1), batching, entry.name):
        classes = entry.batch_classes.add()
        for idx, value in top:
            label = labels[idx] if labels is not None and idx < len(labels) else ""
            classes.cls.add(idx=idx, value=float(value), label=label)


# ---- status -------------------------------------------------------------------------------------


def server_status(
    dp: DataPlane,
    model: str,
    uptime_ns: int,
    stats: Mapping[str, Duration],
) -> ServerStatus:
    """``/api/status[/<model>]``: the server, and each model's config, versions and counters."""
    status = ServerStatus(id=dp.options.server_id, version=dp.server_metadata()["version"])
    status.uptime_ns = uptime_ns
    if dp.exiting:
        status.ready_state = ServerReadyState.SERVER_EXITING
    elif dp.started:
        status.ready_state = ServerReadyState.SERVER_READY
    else:
        status.ready_state = ServerReadyState.SERVER_INITIALIZING
    names = dp.models.names()
    if model:
        if model not in names:
            raise InvalidArgument(f"no status available for unknown model '{model}'")
        names = [model]
    for name in names:
        _model_status(status.model_status[name], dp.models.versions(name))
    for field_name, key in (
        ("status_stats", "status"),
        ("health_stats", "health"),
        ("model_control_stats", "model_control"),
        ("shm_control_stats", "shm_control"),
        ("repository_stats", "repository"),
    ):
        d = stats.get(key)
        if d is not None:
            success = getattr(status, field_name).success
            success.count, success.total_time_ns = d.count, d.ns
    return status


def _model_status(out: ModelStatus, versions: Mapping[int, ModelVersion]) -> None:
    configs = [mv.config for _, mv in sorted(versions.items()) if mv.config is not None]
    if configs:
        out.config.CopyFrom(configs[-1])
    for v, mv in sorted(versions.items()):
        vs = out.version_status[v]
        vs.ready_state = _READY_STATES.get(mv.state, ModelReadyState.MODEL_UNKNOWN)
        if mv.reason:
            vs.ready_state_reason.message = mv.reason
        s = mv.stats
        vs.model_execution_count = s.execution_count
        vs.model_inference_count = s.inference_count
        vs.last_inference_timestamp_milliseconds = s.last_inference
        # naiad counts executions per batch size; TRTIS keyed requests by their batch size
        for size, b in s.batch.items():
            entry = vs.infer_stats[size]
            ns = b.compute_input.ns + b.compute_infer.ns + b.compute_output.ns
            entry.success.count = entry.compute.count = b.compute_infer.count
            entry.success.total_time_ns = entry.compute.total_time_ns = ns


def shm_status(dp: DataPlane) -> SharedMemoryStatus:
    status = SharedMemoryStatus()
    for region in dp.shm.regions():
        entry = status.shared_memory_region.add(name=region.name, byte_size=region.byte_size)
        entry.system_shared_memory.shared_memory_key = region.key
        entry.system_shared_memory.offset = region.offset
    return status
