"""ONNX Runtime backend for naiad: Triton's ``onnxruntime`` backend, platform ``onnxruntime_onnx``.

Entry point ``onnxruntime`` of group ``naiad.backends``; onnxruntime is imported only when a model
loads. README.md describes the behaviour (auto-complete, thread defaults, parameters)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import naiad
import numpy as np
from naiad import InferenceBackend, InternalError, InvalidArgument, ModelLoadError
from naiad.config.parameters import bool_parameter, int_parameter, parameter
from naiad.tensors import ModelTensor, check_config_tensor, config_to_protocol, fill_config_tensor

__all__ = ["OnnxBackend", "naiad_register_backends"]

log = logging.getLogger(__name__)

#: Triton's ``--backend-config=onnxruntime,default-max-batch-size`` default
DEFAULT_MAX_BATCH_SIZE = 4

#: ORT type -> (DataType name, numpy dtype to feed; None: fed as given, e.g. BF16 numpy lacks)
_TYPES: dict[str, tuple[str, np.dtype | None]] = {
    f"tensor({ort})": (f"TYPE_{cfg}", np.dtype(npy) if npy else None)
    for ort, cfg, npy in (
        ("bool", "BOOL", "bool"),
        ("uint8", "UINT8", "uint8"),
        ("uint16", "UINT16", "uint16"),
        ("uint32", "UINT32", "uint32"),
        ("uint64", "UINT64", "uint64"),
        ("int8", "INT8", "int8"),
        ("int16", "INT16", "int16"),
        ("int32", "INT32", "int32"),
        ("int64", "INT64", "int64"),
        ("float16", "FP16", "float16"),
        ("float", "FP32", "float32"),
        ("double", "FP64", "float64"),
        ("string", "STRING", None),
        ("bfloat16", "BF16", None),
    )
}
_STRING = "tensor(string)"
#: Triton's optimization.graph.level -> ORT GraphOptimizationLevel name (anything else: ENABLE_ALL)
_GRAPH_LEVELS = {-1: "ORT_ENABLE_BASIC", 1: "ORT_ENABLE_EXTENDED", 2: "ORT_DISABLE_ALL"}

# A model tensor as onnxruntime reports it: (name, ORT type string, dims with -1 for unknown)
Info = tuple[str, str, list[int]]


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelLoadError(f"the onnxruntime backend cannot import onnxruntime: {exc}") from exc
    return onnxruntime


def _model_file(config, version_path: Path) -> Path:
    """The model file; a folder of that name holds model.onnx (and external data files)."""
    path = Path(version_path) / (config.default_model_filename or "model.onnx")
    if path.is_dir():
        path = path / "model.onnx"
    if not path.is_file():
        raise ModelLoadError(f"unable to find ONNX model file '{path}'")
    return path


def _open(ort, source: Path | bytes, options, providers) -> tuple:
    """(session, inputs, outputs, overridable initializers, which a config may list as inputs).

    ``source``: the model file, or a serialized ModelProto built in memory."""
    what = "built in memory" if isinstance(source, bytes) else f"file '{source}'"
    try:
        session = ort.InferenceSession(
            source if isinstance(source, bytes) else str(source),
            sess_options=options,
            providers=providers,
        )
    except Exception as exc:
        raise ModelLoadError(f"failed to load ONNX model {what}: {exc}") from exc
    return session, *(
        [
            (a.name, a.type, [d if isinstance(d, int) and d >= 0 else -1 for d in a.shape])
            for a in args
        ]
        for args in (
            session.get_inputs(),
            session.get_outputs(),
            session.get_overridable_initializers(),
        )
    )


def _session_options(ort, config, cpu_share: int):
    so = ort.SessionOptions()
    level = config.optimization.graph.level if config.HasField("optimization") else 0
    so.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, _GRAPH_LEVELS.get(level, "ORT_ENABLE_ALL")
    )
    mode = int_parameter(config, "execution_mode", 0)
    if mode not in (0, 1):
        raise ModelLoadError(f"parameter 'execution_mode' must be 0 or 1, got {mode}")
    so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if mode else ort.ExecutionMode.ORT_SEQUENTIAL
    # Triton leaves ORT's default (one intra-op thread per physical core, per session). naiad's
    # default splits this process's CPUs between the model's instances instead (cpu_share), so
    # the default two CPU instances do not each spin up a pool the size of the machine.
    intra = int_parameter(config, "intra_op_thread_count", 0)
    so.intra_op_num_threads = intra if intra > 0 else cpu_share
    if (inter := int_parameter(config, "inter_op_thread_count", 0)) > 0:
        so.inter_op_num_threads = inter
    for key, attr in (
        ("enable_mem_arena", "enable_cpu_mem_arena"),
        ("enable_mem_pattern", "enable_mem_pattern"),
    ):
        if parameter(config, key) is not None:
            setattr(so, attr, bool_parameter(config, key, False))
    for key in config.parameters:  # e.g. session.intra_op.allow_spinning: "0"
        if key.startswith("session."):
            so.add_session_config_entry(key, config.parameters[key].string_value)
    return so


def _tensor(info: Info) -> ModelTensor:
    """An ORT tensor as the core's ModelTensor (datatype "" when Triton has no name for it)."""
    name, ort_type, dims = info
    return ModelTensor(
        name, config_to_protocol(_TYPES[ort_type][0]) if ort_type in _TYPES else "", tuple(dims)
    )


def _implicit(config) -> tuple[set[str], set[str]]:
    """Model inputs / outputs the config names outside input/output: sequence controls and
    states, batch inputs (the scheduler feeds them)."""
    seq = config.sequence_batching
    ins = {c.name for c in seq.control_input} | {s.input_name for s in seq.state}
    return ins | {t for b in config.batch_input for t in b.target_name}, {
        s.output_name for s in seq.state
    }


def _validate(config, inputs: list[Info], outputs: list[Info], optional: list[Info]) -> None:
    """Every config tensor exists in the model and matches it; every model input is fed."""
    model, mbs = config.name, config.max_batch_size
    known_in = {i[0]: i for i in inputs + optional}
    known_out = {o[0]: o for o in outputs}
    for kind, section, known in (
        ("input", config.input, known_in),
        ("output", config.output, known_out),
    ):
        for io in section:
            if io.name not in known:
                raise ModelLoadError(
                    f"model '{model}': configuration {kind} '{io.name}' is not "
                    f"in the ONNX model; its {kind}s are {sorted(known)}"
                )
            check_config_tensor(model, kind, io, _tensor(known[io.name]), mbs, "ONNX")
    missing = sorted(
        {i[0] for i in inputs} - {io.name for io in config.input} - _implicit(config)[0]
    )
    if missing:
        raise ModelLoadError(
            f"model '{model}': ONNX model inputs {missing} are missing from the configuration"
        )


def _add(section, info: Info, max_batch_size: int) -> None:
    io = section.add(name=info[0])
    fill_config_tensor(io, _tensor(info), max_batch_size)
    if max_batch_size == 0:
        io.ClearField("reshape")  # Triton's ORT backend: a scalar is dims [1], fed as a scalar


class OnnxBackend(InferenceBackend):
    """One ONNX Runtime session per instance."""

    name = "onnxruntime"
    platforms = ("onnxruntime_onnx",)
    default_model_filename = "model.onnx"
    # Triton's default for CPU groups of onnxruntime models: 2 instances (each with half the
    # CPUs as intra-op threads, see _session_options). GPU groups get 1 per GPU (core rule).
    default_instance_count = 2

    @classmethod
    def auto_complete_config(cls, config, version_path: Path) -> None:
        if config.input and config.output:
            # nothing to fill: every instance's load() checks the config against the model,
            # so a complete config costs no extra session here (1,000 models start 2x faster)
            return
        ort = _ort()
        so = ort.SessionOptions()  # only reads the signature: no optimisation, one thread
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        _, inputs, outputs, optional = _open(
            ort, _model_file(config, version_path), so, ["CPUExecutionProvider"]
        )
        implicit_in, implicit_out = _implicit(config)
        had_inputs = len(config.input) + len(config.batch_input) > 0
        had_outputs = len(config.output) > 0
        batchable = all(d and d[0] == -1 for _, _, d in inputs + outputs)
        if not had_inputs and not had_outputs and config.max_batch_size == 0 and batchable:
            config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
        mbs = config.max_batch_size
        if mbs > 0 and not batchable:
            fixed = [n for n, _, d in inputs + outputs if not d or d[0] != -1]
            raise ModelLoadError(
                f"model '{config.name}': max_batch_size is {mbs} but the ONNX "
                f"model cannot batch: {fixed} have no variable first dimension"
            )
        if not (had_inputs and had_outputs):  # Triton auto-completes only then
            if (
                batchable
                and mbs > 1
                and not (
                    config.HasField("dynamic_batching") or config.HasField("sequence_batching")
                )
            ):
                config.dynamic_batching.SetInParent()
            for info in outputs if not had_outputs else ():
                if info[0] not in implicit_out:
                    _add(config.output, info, mbs)
        given = {io.name for io in config.input} | implicit_in
        for info in inputs:  # a model input the config leaves out could never be fed
            if info[0] not in given:
                _add(config.input, info, mbs)
        _validate(config, inputs, outputs, optional)

    def model_source(self) -> Path | bytes:
        """What :meth:`load` opens: the model file. A subclass that builds its ONNX model from
        another format (naiad-backend-caffe2) returns the serialized ModelProto instead."""
        return _model_file(self.config, self.version_path)

    def load(self) -> None:
        ort = _ort()
        path = self.model_source()
        options = _session_options(ort, self.config, self.cpu_share())
        providers: list = ["CPUExecutionProvider"]
        want_cuda = self.instance.kind == "KIND_GPU"
        if want_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            device = str(max(self.instance.device_id, 0))
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device}))
        self.session, inputs, outputs, optional = _open(ort, path, options, providers)
        got = self.session.get_providers()
        if want_cuda and "CUDAExecutionProvider" not in got:
            log.warning(
                "instance %s of '%s' is KIND_GPU but onnxruntime could not use CUDA "
                "(available: %s); it runs on the CPU",
                self.instance.name,
                self.config.name,
                ort.get_available_providers(),
            )
        log.info(
            "instance %s of '%s': %s with providers %s, %d intra-op threads",
            self.instance.name,
            self.config.name,
            "a model built in memory" if isinstance(path, bytes) else path,
            got,
            options.intra_op_num_threads,
        )
        _validate(self.config, inputs, outputs, optional)
        #: input name -> numpy dtype to feed, or _STRING (decode), or None (feed as given)
        self._feeds = {
            n: _STRING if t == _STRING else _TYPES.get(t, ("", None))[1]
            for n, t, _ in inputs + optional
        }
        self._scalars = {n for n, _, d in inputs + optional if not d}
        self._string_outputs = {n for n, t, _ in outputs if t == _STRING}
        self._all_outputs = [n for n, _, _ in outputs]
        #: the session's run without the Python wrapper's per-call checks, on the CPU only:
        #: the wrapper re-checks the feed's names against the model (the core's signature
        #: already did) and retries on another provider when one fails (the CPU has none)
        inner = getattr(self.session, "_sess", None)
        cpu_only = got == ["CPUExecutionProvider"]
        self._run = inner.run if cpu_only and hasattr(inner, "run") else None
        #: default run options, made once: the inner run given None for them looks up an
        #: attribute its argument's type lacks, which raises and clears an AttributeError in
        #: every execution (~2,000 instructions of ~80,000 on the instance thread for `simple`)
        self._run_options = ort.RunOptions()

    def execute(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> Mapping[str, np.ndarray]:
        feed = self._feed(inputs)
        names = list(outputs) or self._all_outputs
        try:
            if self._run is not None:
                results = self._run(names, feed, self._run_options)
            else:
                results = self.session.run(names, feed)
        except Exception as exc:
            kind = InvalidArgument if type(exc).__name__ == "InvalidArgument" else InternalError
            raise kind(f"onnx runtime error: {exc}") from exc
        feed.clear()  # the converted inputs go before the outputs are converted
        produced = {}
        for name, value in zip(names, results, strict=True):
            if name in self._string_outputs:
                value = _to_bytes(value)
            produced[name] = value.reshape(1) if value.ndim == 0 else value
        return produced

    def _feed(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {}
        for name, array in inputs.items():
            want = self._feeds.get(name)
            if want is _STRING:
                array = _to_str(name, array)
            elif want is not None and array.dtype != want:
                array = array.astype(want)
            if name in self._scalars and array.ndim and array.size == 1:
                array = array.reshape(())
            feed[name] = array
        return feed

    def unload(self) -> None:
        self.session = None


#: BYTES elements converted in one step (the step's strings are all that is alive twice)
_CHUNK = 1 << 16
#: tensors with fewer elements are converted in one go, as object arrays
_FIXED_FROM = 1 << 10
#: what one short ``str`` costs in an object array: the object and its slot
_STR_COST = 72
#: whether numpy casts a ``bytes`` object to unicode by decoding it (ASCII, in C); an older
#: numpy that writes its ``repr`` instead leaves the fixed-width path unused
_CAST_DECODES = bool(np.array([b"ab"], dtype=object).astype("U4")[0] == "ab")


def _to_str(name: str, array: np.ndarray) -> np.ndarray:
    """BYTES (object array of bytes) -> what ORT takes for tensor(string).

    A large tensor becomes a fixed-width unicode array (``U``) when that is no larger than
    the ``str`` objects would be (4 bytes a character against ~72 bytes an object), filled in
    chunks; otherwise, or when an element would not survive ``U`` (a trailing NUL), an object
    array of ``str``, also filled in chunks.
    """
    if array.dtype.kind == "U":
        return array
    flat = array.reshape(-1)
    if len(flat) >= _FIXED_FROM and _CAST_DECODES:
        fixed = _fixed_width(name, flat)
        if fixed is not None:
            return fixed.reshape(array.shape)
    out = np.empty(len(flat), dtype=object)
    for i in range(0, len(flat), _CHUNK):
        out[i : i + _CHUNK] = _decoded(name, flat[i : i + _CHUNK])
    return out.reshape(array.shape)


def _decoded(name: str, chunk: np.ndarray) -> list[str]:
    try:
        return [
            bytes(x).decode() if isinstance(x, (bytes, bytearray, memoryview)) else str(x)
            for x in chunk
        ]
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"input '{name}' holds a string that is not valid UTF-8, which "
            f"ONNX string tensors require: {exc}"
        ) from None


def _fixed_width(name: str, flat: np.ndarray) -> np.ndarray | None:
    """``flat`` (bytes objects) as a ``U`` array, or None where that does not pay or fit."""
    if set(map(type, flat)) != {bytes}:
        return None
    lengths = np.fromiter(map(len, flat), dtype=np.int64, count=len(flat))
    width = max(int(lengths.max()), 1)
    if 4 * width * len(flat) > int(lengths.sum()) + _STR_COST * len(flat):
        return None  # one long string would make every element wide
    out = np.empty(len(flat), dtype=f"U{width}")
    for i in range(0, len(flat), _CHUNK):
        chunk = flat[i : i + _CHUNK]
        try:
            part = chunk.astype(out.dtype)  # ASCII, in C
        except UnicodeDecodeError:
            text = _decoded(name, chunk)
            if any(s.endswith("\x00") for s in text):
                return None
            out[i : i + _CHUNK] = text
            continue
        if (np.char.str_len(part) != lengths[i : i + _CHUNK]).any():
            return None  # a trailing NUL, which U drops: the object form keeps it
        out[i : i + _CHUNK] = part
    return out


def _to_bytes(array: np.ndarray) -> np.ndarray:
    """ORT's strings -> BYTES, in chunks, each chunk's strings dropped as its bytes are made
    (when ``array`` is ORT's own output, nothing else holds them)."""
    flat = array.reshape(-1)
    writable = flat.dtype == object and flat.flags.writeable and np.may_share_memory(flat, array)
    out = np.empty(len(flat), dtype=object)
    for i in range(0, len(flat), _CHUNK):
        chunk = flat[i : i + _CHUNK]
        try:
            out[i : i + _CHUNK] = list(map(str.encode, chunk))
        except TypeError:  # not all str
            out[i : i + _CHUNK] = [s.encode() if isinstance(s, str) else bytes(s) for s in chunk]
        if writable:
            flat[i : i + _CHUNK] = None
    return out.reshape(array.shape)


@naiad.hookimpl
def naiad_register_backends(registry) -> None:
    registry.register(OnnxBackend)
