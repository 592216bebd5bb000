"""What the sequence batcher feeds a model besides the client's inputs.

Control tensors (``CONTROL_SEQUENCE_START`` / ``_READY`` / ``_END`` / ``_CORRID``) and implicit
state (``sequence_batching.state``), built once from the config, plus the check of a request's
correlation id against the CORRID control's datatype. Semantics: ``shared/reference/
scheduling.md`` §4.2 and §4.6.

A :class:`SequenceInputs` is built when the model loads, off the event loop (it may read
``<model>/initial_state/`` files); afterwards its methods only build small numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidArgument, ModelLoadError
from ..inference import InferRequest
from ..tensors import NUMPY_DTYPES, WIRE_DTYPES, config_to_protocol, deserialize_bytes_tensor

#: the folder of a model that holds ``initial_state.data_file`` files (Triton's name)
INITIAL_STATE_FOLDER = "initial_state"

_MASK32 = 0xFFFFFFFF


def _protocol(config_type: int) -> str:
    from ..config import DataType

    return config_to_protocol(DataType.Name(config_type))


@dataclass(frozen=True, slots=True)
class _Flag:
    """One boolean control (START, READY or END): its tensor name and two one-item arrays."""

    name: str
    false: np.ndarray
    true: np.ndarray

    def value(self, flag: bool) -> np.ndarray:
        return (self.true if flag else self.false).copy()


@dataclass(frozen=True, slots=True)
class StateSpec:
    """One implicit state: fed as ``input_name``, read back from ``output_name``."""

    input_name: str
    output_name: str
    #: the state of a sequence's first request: one batch item (leading 1 when batching)
    initial: np.ndarray


class SequenceInputs:
    """Control and state tensors of one sequence model, per request (one batch item)."""

    def __init__(self, config, model_path: Path | None = None) -> None:
        batcher = config.sequence_batching
        self.model_name: str = config.name
        self.batching: bool = config.max_batch_size > 0
        #: the shape of one control tensor for one request
        self._shape: tuple[int, ...] = (1, 1) if self.batching else (1,)
        flags: dict[str, _Flag] = {}
        self._corrid_name = ""
        self._corrid_type = ""  # protocol name: UINT64, INT64, UINT32, INT32 or BYTES
        kinds = type(batcher).Control.Kind
        for control_input in batcher.control_input:
            for control in control_input.control:
                kind = kinds.Name(control.kind)
                if kind == "CONTROL_SEQUENCE_CORRID":
                    self._corrid_name = control_input.name
                    self._corrid_type = _protocol(control.data_type)
                else:
                    flags[kind] = self._flag(control_input.name, control)
        self._start = flags.get("CONTROL_SEQUENCE_START")
        self._ready = flags.get("CONTROL_SEQUENCE_READY")
        self._end = flags.get("CONTROL_SEQUENCE_END")
        self.states: tuple[StateSpec, ...] = tuple(
            self._state(s, model_path) for s in batcher.state
        )
        #: output names the model must produce on every execution (the states)
        self.state_outputs: tuple[str, ...] = tuple(s.output_name for s in self.states)

    # ---- construction --------------------------------------------------------------------------

    def _flag(self, name: str, control) -> _Flag:
        values: list
        dtype: type[np.generic]
        if control.int32_false_true:
            values, dtype = list(control.int32_false_true), np.int32
        elif control.fp32_false_true:
            values, dtype = list(control.fp32_false_true), np.float32
        else:
            values, dtype = list(control.bool_false_true), np.bool_
        false, true = (np.full(self._shape, v, dtype=dtype) for v in values)
        return _Flag(name, false, true)

    def _state(self, state, model_path: Path | None) -> StateSpec:
        model, name = self.model_name, state.input_name
        datatype = _protocol(state.data_type)
        if datatype not in NUMPY_DTYPES:
            raise ModelLoadError(
                f"state '{name}' of model '{model}' has a data type naiad cannot hold"
            )
        if len(state.initial_state) > 1:
            raise ModelLoadError(
                f"initial_state field for state input '{name}' must contain exactly one or zero "
                f"element. Found '{len(state.initial_state)}' elements."
            )
        if state.initial_state:
            dims, data = self._initial_data(state, state.initial_state[0], datatype, model_path)
        else:
            # Triton leaves such a state undefined; naiad starts from zeros (-1 dims as 1)
            dims = tuple(d if d >= 0 else 1 for d in state.dims)
            data = _zeros(datatype, dims)
        lead = (1,) if self.batching else ()
        initial = data.reshape(lead + dims)
        initial.flags.writeable = False
        return StateSpec(name, state.output_name, initial)

    def _initial_data(
        self, state, initial, datatype: str, model_path: Path | None
    ) -> tuple[tuple[int, ...], np.ndarray]:
        """Triton's ``GenerateInitialStateData`` checks and data, with its messages."""
        name = state.input_name
        if initial.data_type != state.data_type:
            raise ModelLoadError(
                f"The data type used for 'initial_state' field of state '{name}' does not "
                "match the state data type."
            )
        if not initial.name:
            raise ModelLoadError(
                f"Field 'name' must be set when using initial_state for state input '{name}'."
            )
        if len(initial.dims) != len(state.dims):
            raise ModelLoadError(
                "Number of dimensions in 'initial_state' doesn't match the size of 'state' "
                f"dimensions for state input '{name}'. {len(initial.dims)} != {len(state.dims)}"
            )
        for want, got in zip(state.dims, initial.dims, strict=True):
            if got == -1:
                raise ModelLoadError(
                    f"'initial_state' field for state input name '{name}' contains variable "
                    "dimensions."
                )
            if want != -1 and want != got:
                raise ModelLoadError(
                    f"'initial_state' dim for input name '{name}' doesn't match 'state' dim "
                    f"description. {got} != {want}"
                )
        dims = tuple(initial.dims)
        which = initial.WhichOneof("state_data")
        if which == "zero_data":
            return dims, _zeros(datatype, dims)
        if which != "data_file":
            raise ModelLoadError(
                f"initial_state setting expects state'{name}' to have state_data set"
            )
        if model_path is None:
            raise ModelLoadError(f"initial_state of state '{name}' needs the model's folder")
        path = Path(model_path) / INITIAL_STATE_FOLDER / initial.data_file
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"failed to read initial_state file '{path}': {exc}") from exc
        count = int(np.prod(dims, dtype=np.int64))
        if datatype == "BYTES":
            try:
                return dims, deserialize_bytes_tensor(raw, count, name)
            except InvalidArgument as exc:
                raise ModelLoadError(f"initial_state file '{path}': {exc}") from exc
        wire = WIRE_DTYPES[datatype]
        need = count * wire.itemsize
        if need > len(raw):
            raise ModelLoadError(
                f"initial_state setting expects {need} bytes, but the data provided from "
                f"{initial.data_file}only has {len(raw)} bytes."
            )
        array = np.frombuffer(raw[:need], dtype=wire).astype(NUMPY_DTYPES[datatype])
        return dims, array

    # ---- per request ---------------------------------------------------------------------------

    def check_id(self, request: InferRequest) -> None:
        """The correlation id's type must suit the CORRID control (Triton's message)."""
        if not self._corrid_name:
            return
        got = "BYTES" if isinstance(request.sequence_id, str) else "UINT64"
        want = self._corrid_type
        if (got == "BYTES") != (want == "BYTES"):
            raise InvalidArgument(
                f"sequence batching control '{self._corrid_name}' data-type is '{got}', but "
                f"model '{request.model_name}' expects '{want}'"
            )

    def controls(
        self, start: bool, end: bool, ready: bool, corrid: int | str | None
    ) -> dict[str, np.ndarray]:
        """Control tensors for one request; ``ready=False`` (a filler) sends false START/END
        and a zero / empty CORRID, as Triton does."""
        out: dict[str, np.ndarray] = {}
        if self._start is not None:
            out[self._start.name] = self._start.value(start and ready)
        if self._end is not None:
            out[self._end.name] = self._end.value(end and ready)
        if self._ready is not None:
            out[self._ready.name] = self._ready.value(ready)
        if self._corrid_name:
            out[self._corrid_name] = self._corrid(corrid if ready else None)
        return out

    def _corrid(self, corrid: int | str | None) -> np.ndarray:
        kind = self._corrid_type
        if kind == "BYTES":
            text = corrid if isinstance(corrid, str) else ""
            array = np.empty(self._shape, dtype=np.object_)
            array.flat[0] = text.encode("utf-8")
            return array
        value = corrid if isinstance(corrid, int) else 0
        if kind in ("UINT32", "INT32"):  # Triton copies the low 32 bits
            low = np.full(self._shape, value & _MASK32, dtype=np.uint32)
            return low if kind == "UINT32" else low.view(np.int32)
        wide = np.full(self._shape, value, dtype=np.uint64)
        return wide if kind == "UINT64" else wide.view(np.int64)

    def initial_states(self) -> dict[str, np.ndarray]:
        """input name -> the state a sequence starts from (read-only arrays)."""
        return {s.input_name: s.initial for s in self.states}


def _zeros(datatype: str, dims: tuple[int, ...]) -> np.ndarray:
    if datatype == "BYTES":
        array = np.empty(dims, dtype=np.object_)
        array.fill(b"")
        return array
    return np.zeros(dims, dtype=NUMPY_DTYPES[datatype])
