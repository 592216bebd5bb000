"""The transports' cache of request headers: a header seen before is not parsed again.

A client calling in a loop (tritonclient, perf_analyzer) sends the same JSON header each time
with new tensor bytes after it. The HTTP edge keeps each header's parsed form, a
:class:`BinaryPlan`, per model version and keyed by the header's exact bytes: the next request
with that header only slices its tensors out of the binary part, and is validated against the
version's signature once per header (``DataPlane.infer(..., validated=True)``). The lean gRPC
front keeps the same plans keyed by a ModelInfer message's bytes other than its raw tensors
(:class:`naiad.grpc.codec.RawPlan`).

The cache belongs to the edge, not to the domain: a :class:`~naiad.registry.ModelVersion`, its
:class:`~naiad.signature.Signature` and an :class:`~naiad.inference.InferRequest` carry none of it.
Entries are held per version object, weakly. An unloaded version is never resolved again, so its
entries are never reused; they go with its object (a reload makes new version objects, which
start empty, and the registry drops the old ones). A plan also remembers the signature it was
validated against, and is validated again for any other.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import numpy as np

from .inference import InferRequest
from .tensors import WIRE_DTYPES, from_wire_bytes

#: binary request headers longer than this are parsed each time (and not kept)
PLAN_HEADER_MAX = 4096
#: headers kept per model version (the version's entries are emptied when it fills up)
PLANS_MAX = 64


class BinaryPlan:
    """A binary request's JSON header, parsed once.

    Only headers whose every input is binary data qualify (no JSON data, no shared memory, no
    sequence parameters): the request built from one differs from the last only in its tensors.
    """

    __slots__ = ("template", "inputs", "total", "checked", "batch_size", "heads", "_decode")

    def __init__(
        self,
        request: InferRequest,
        inputs: tuple[tuple[str, str, tuple[int, ...], int], ...],
        total: int,
    ) -> None:
        # the request's fields without its tensors (which must not stay alive here), with
        # parameters of its own: what is added to the request later (forwarded headers) is
        # that call's, not every later call's
        self.template = dataclasses.replace(request, inputs={}, parameters=dict(request.parameters))
        self.inputs = inputs
        self.total = total
        #: the signature a request of this header passed validation against, and the batch
        #: size it found (set by the edge once the data plane accepted one)
        self.checked: Any = None
        self.batch_size = 0
        #: the JSON headers of this header's all-binary answers, by what they say
        #: (``codec.encode_infer_response``)
        self.heads: dict[tuple, bytes] = {}
        #: per input: (name, the wire dtype of a fixed-size type or None, datatype, shape,
        #: size): a fixed-size input is sliced straight into an array (:meth:`build`)
        self._decode = tuple(
            (
                name,
                None if datatype in ("BYTES", "BF16") else WIRE_DTYPES.get(datatype),
                datatype,
                shape,
                size,
            )
            for name, datatype, shape, size in inputs
        )

    def build(self, binary: memoryview, model_name: str, model_version: int) -> InferRequest:
        t = self.template
        inputs = {}
        offset = 0
        for name, wire, datatype, shape, size in self._decode:
            piece = binary[offset : offset + size]
            offset += size
            if wire is None:
                inputs[name] = from_wire_bytes(piece, datatype, shape, name)
                continue
            # from_wire_bytes, written out: the first request of this header was decoded by
            # it, so each input's size is its shape's (and ``find`` checked the total)
            array = np.frombuffer(piece, dtype=wire)
            if datatype == "BOOL":
                array = array.view(np.bool_)
            inputs[name] = array.reshape(shape)
        return InferRequest(
            model_name,
            model_version,
            t.id,
            inputs,
            t.outputs,
            t.binary_output,
            dict(t.parameters) if t.parameters else {},
            priority=t.priority,
            timeout_us=t.timeout_us,
            batch_size=self.batch_size or 1,
        )

    def validated(self, signature: Any) -> bool:
        """A request of this header passed validation against ``signature`` already."""
        return self.checked is signature and self.batch_size > 0

    def accepted(self, signature: Any, request: InferRequest) -> None:
        """``request``, of this header, passed validation against ``signature``."""
        self.checked = signature
        self.batch_size = request.batch_size


def find(
    plans: dict[bytes, BinaryPlan], body: bytes | memoryview, header_length: int
) -> BinaryPlan | None:
    """The plan of a body's binary header (``header_length`` bytes, > 0), if one was made and
    the binary part has the size it expects."""
    if header_length > PLAN_HEADER_MAX:
        return None
    key = body[:header_length]
    plan = plans.get(key if isinstance(key, bytes) else bytes(key))
    if plan is not None and plan.total == len(body) - header_length:
        return plan
    return None


def keep(plans: dict[bytes, Any], key: bytes, plan: Any) -> None:
    """Keep ``plan`` under ``key`` in one version's table, at most :data:`PLANS_MAX` of them (a
    full table is emptied first: clients send a few headers over and over)."""
    if len(plans) >= PLANS_MAX:
        plans.clear()
    plans[key] = plan


def plannable(request: InferRequest) -> bool:
    """A request whose header can be reused as is: no sequence, no shared memory."""
    if request.sequence_id or request.sequence_start or request.sequence_end:
        return False
    return not request.outputs or all(o.shm is None for o in request.outputs)


class Plans(dict[bytes, BinaryPlan]):
    """One model version's plans by header bytes (a dict that can be referred to weakly)."""

    __slots__ = ("__weakref__",)


class PlanCache:
    """Binary header plans per model version (held weakly), at most :data:`PLANS_MAX` each."""

    __slots__ = ("_by_version", "_last")

    def __init__(self) -> None:
        self._by_version: weakref.WeakKeyDictionary[Any, Plans] = weakref.WeakKeyDictionary()
        #: the version asked for last and its table, both held weakly (clients call one
        #: model in a loop: that one is found without hashing a new weak reference)
        self._last: tuple[weakref.ref, weakref.ref[Plans]] | None = None

    def of(self, version: Any) -> dict[bytes, BinaryPlan]:
        """The plans of one model version object (a new, empty table for a new version)."""
        last = self._last
        if last is not None and last[0]() is version:
            plans = last[1]()
            if plans is not None:
                return plans
        plans = self._by_version.get(version)
        if plans is None:
            plans = self._by_version[version] = Plans()
        self._last = (weakref.ref(version), weakref.ref(plans))
        return plans

    def __len__(self) -> int:
        """Model versions with a table (for tests and diagnostics)."""
        return len(self._by_version)
