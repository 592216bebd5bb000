"""A model version's inputs and outputs, computed once from its config, and request validation.

Validation happens before anything is queued: a request that reaches a scheduler is known to be
well formed for its model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidArgument
from .inference import InferRequest
from .tensors import NUMPY_DTYPES, config_to_protocol


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    #: protocol datatype, e.g. "FP32", "BYTES"
    datatype: str
    #: config dims (without the batch dimension)
    dims: tuple[int, ...]
    #: shape the backend sees/produces (without batch), or None when no reshape
    reshape: tuple[int, ...] | None
    optional: bool = False
    label_filename: str = ""

    @property
    def numpy_dtype(self) -> np.dtype:
        return NUMPY_DTYPES[self.datatype]


@dataclass(frozen=True, slots=True)
class Signature:
    model_name: str
    max_batch_size: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    #: names of the inputs a request must carry (computed once)
    required: frozenset[str] = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        names = frozenset(s.name for s in self.inputs.values() if not s.optional)
        object.__setattr__(self, "required", names)

    @classmethod
    def from_config(cls, config) -> Signature:
        def spec(t, optional=False, label=""):
            reshape = tuple(t.reshape.shape) if t.HasField("reshape") else None
            datatype = config_to_protocol(_type_name(t.data_type))
            return TensorSpec(t.name, datatype, tuple(t.dims), reshape, optional, label)

        return cls(
            config.name,
            config.max_batch_size,
            {t.name: spec(t, optional=t.optional) for t in config.input},
            {t.name: spec(t, label=t.label_filename) for t in config.output},
        )

    def full_shape(self, spec: TensorSpec) -> list[int]:
        """The shape clients see in metadata: a leading -1 when the model batches."""
        return ([-1] if self.max_batch_size > 0 else []) + list(spec.dims)

    def validate(self, request: InferRequest) -> None:
        """Check names, datatypes, shapes and batch size; set ``request.batch_size``."""
        model = self.model_name
        inputs = request.inputs
        specs = self.inputs
        if not self.required.issubset(inputs.keys()) or not specs.keys() >= inputs.keys():
            for name in inputs:
                if name not in specs:
                    raise InvalidArgument(
                        f"unexpected inference input '{name}' for model '{model}'"
                    )
            missing = sorted(self.required - inputs.keys())
            raise InvalidArgument(
                f"expected {len(self.required)} inputs but got {len(inputs)} inputs for model "
                f"'{model}'. Got input(s) {sorted(inputs)}, but missing required input(s) "
                f"{missing}. Please provide all required input(s)."
            )
        batch = None
        for name, array in inputs.items():
            spec = self.inputs[name]
            expected_dtype = spec.numpy_dtype
            if array.dtype != expected_dtype and not (
                spec.datatype == "BYTES" and array.dtype == np.object_
            ):
                got = _protocol_of(array)
                raise InvalidArgument(
                    f"[request id: {request.id or '<id_unknown>'}] inference input '{name}' "
                    f"data-type is '{got}', but model '{model}' expects '{spec.datatype}'"
                )
            shape = array.shape
            if self.max_batch_size > 0:
                if len(shape) == 0:
                    raise InvalidArgument(
                        f"inference input '{name}' of model '{model}' must have a batch dimension"
                    )
                this_batch = shape[0]
                if batch is None:
                    batch = this_batch
                elif this_batch != batch:
                    raise InvalidArgument(
                        f"inference input '{name}' batch size {this_batch} does not match the "
                        f"other inputs' batch size {batch} for model '{model}'"
                    )
                rest = shape[1:]
            else:
                rest = shape
            if rest != spec.dims and not _dims_match(rest, spec.dims):
                want = self.full_shape(spec)
                raise InvalidArgument(
                    f"unexpected shape for input '{name}' for model '{model}'. Expected "
                    f"{want}, got {list(shape)}"
                )
        if self.max_batch_size > 0:
            batch = batch if batch is not None else 1
            if batch < 1 and inputs:
                raise InvalidArgument(f"inference request batch-size must be >= 1 for '{model}'")
            if batch > self.max_batch_size:
                raise InvalidArgument(
                    f"inference request batch-size must be <= {self.max_batch_size} for '{model}'"
                )
            request.batch_size = batch
        if request.outputs:
            seen = set()
            for out in request.outputs:
                if out.name not in self.outputs:
                    raise InvalidArgument(
                        f"unexpected inference output '{out.name}' for model '{model}'"
                    )
                if out.name in seen:
                    raise InvalidArgument(f"output '{out.name}' already exists in request")
                seen.add(out.name)


def _dims_match(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    if len(shape) != len(dims):
        return False
    return all(d == -1 or d == s for s, d in zip(shape, dims, strict=True))


def _protocol_of(array: np.ndarray) -> str:
    from .tensors import numpy_to_protocol

    try:
        return numpy_to_protocol(array.dtype)
    except InvalidArgument:
        return str(array.dtype)


def _type_name(value: int) -> str:
    from .config import DataType

    return DataType.Name(value)
