"""naiad's PyTorch backend: Triton backend ``pytorch``, platforms ``pytorch_libtorch`` /
``libtorch`` (TorchScript ``model.pt``) and ``torch_aoti`` (``model.pt2``: a ``torch.export``
program or an AOTInductor package).

torch is imported only when a model loads, never when naiad discovers plugins. README.md
describes the behaviour: naming conventions, devices, threads, parameters, auto-complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import naiad
import numpy as np
from naiad import InferenceBackend, InternalError, InvalidArgument, ModelLoadError
from naiad.config.parameters import bool_parameter, int_parameter
from naiad.tensors import (
    ModelTensor,
    check_config_tensor,
    config_datatype,
    config_to_protocol,
    fill_config_tensor,
)

from . import _files
from ._binding import bind_inputs, bind_outputs, pick_output

__all__ = ["DEFAULT_MAX_BATCH_SIZE", "PyTorchBackend", "naiad_register_backends"]

log = logging.getLogger(__name__)

#: max_batch_size auto-complete gives a torch.export program that can batch (Triton's default)
DEFAULT_MAX_BATCH_SIZE = 4
_FRAMEWORK = "PyTorch (torch.export)"


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelLoadError(
            f"the pytorch backend cannot import torch: {exc} (pip install torch; CPU-only: "
            "pip install torch --index-url https://download.pytorch.org/whl/cpu)"
        ) from exc
    return torch


def _implicit_inputs(config: Any) -> list[str]:
    """Model inputs the scheduler feeds: sequence controls and states, batch inputs."""
    seq = config.sequence_batching
    return (
        [c.name for c in seq.control_input]
        + [s.input_name for s in seq.state]
        + [t for b in config.batch_input for t in b.target_name]
    )


def _bound(
    config: Any, inputs: list[ModelTensor], outputs: list[ModelTensor]
) -> Iterator[tuple[str, Any, ModelTensor]]:
    """(kind, config entry, model tensor) for each configured tensor of a torch.export program."""
    names = [io.name for io in config.input] + _implicit_inputs(config)
    binding = bind_inputs(config.name, names, [t.name for t in inputs])
    for io in config.input:
        yield "input", io, inputs[binding.positions[io.name]]
    by_name = {t.name: t for t in outputs}
    for io, (name, index) in zip(
        config.output,
        bind_outputs(config.name, [o.name for o in config.output]).items(),
        strict=True,
    ):
        tensor = by_name.get(name) or (outputs[index] if index < len(outputs) else None)
        if tensor is None:
            raise ModelLoadError(
                f"model '{config.name}': output '{name}' is not among the "
                f"{_FRAMEWORK} model's outputs {sorted(by_name)}"
            )
        yield "output", io, tensor


def _check_signature(config: Any, inputs: list[ModelTensor], outputs: list[ModelTensor]) -> None:
    for kind, io, tensor in _bound(config, inputs, outputs):
        check_config_tensor(
            config.name,
            kind,
            io,
            dataclasses.replace(tensor, name=io.name),
            config.max_batch_size,
            _FRAMEWORK,
        )


def _complete(config: Any, inputs: list[ModelTensor], outputs: list[ModelTensor]) -> None:
    """Triton's auto-complete rules (as for ONNX) applied to a torch.export signature."""
    had_inputs, had_outputs = len(config.input) > 0, len(config.output) > 0
    batchable = all(t.batchable for t in inputs + outputs)
    if not had_inputs and not had_outputs and config.max_batch_size == 0 and batchable:
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
    mbs = config.max_batch_size
    if mbs > 0 and not batchable:
        fixed = [t.name for t in inputs + outputs if not t.batchable]
        raise ModelLoadError(
            f"model '{config.name}': max_batch_size is {mbs} but the "
            f"{_FRAMEWORK} model cannot batch: {fixed} have no variable first "
            "dimension (export with a torch.export.Dim for it)"
        )
    if (
        not (had_inputs and had_outputs)
        and batchable
        and mbs > 1
        and not (config.HasField("dynamic_batching") or config.HasField("sequence_batching"))
    ):
        config.dynamic_batching.SetInParent()
    implicit = set(_implicit_inputs(config))
    for section, tensors, had in (
        (config.input, inputs, had_inputs),
        (config.output, outputs, had_outputs),
    ):
        for t in tensors if not had else ():
            if t.name not in implicit:
                section.add(name=t.name)
    for _, io, tensor in _bound(config, inputs, outputs):
        fill_config_tensor(io, tensor, mbs)  # fills only what the entry leaves out


def _set_interop_threads(torch: Any, wanted: int | None, model: str) -> None:
    """Inter-op threads are per process and settable once, before any inter-op work."""
    if wanted is None or torch.get_num_interop_threads() == wanted:
        return
    try:
        torch.set_num_interop_threads(wanted)
    except RuntimeError:
        log.warning(
            "model '%s' asks for INTER_OP_THREAD_COUNT %d, but this process already "
            "uses %d inter-op threads (set once per process, before the first "
            "inter-op work); keeping %d",
            model,
            wanted,
            torch.get_num_interop_threads(),
            torch.get_num_interop_threads(),
        )


class PyTorchBackend(InferenceBackend):
    """One PyTorch model instance, on the CPU or one GPU."""

    name = "pytorch"
    platforms = ("pytorch_libtorch", "libtorch", "torch_aoti")
    default_model_filename = "model.pt"
    default_instance_count = 1

    @classmethod
    def auto_complete_config(cls, config: Any, version_path: Path) -> None:
        """Fill inputs, outputs and max_batch_size of a torch.export program (TorchScript and
        AOTInductor files record no shapes or dtypes: nothing is filled, as in Triton)."""
        path = _files.model_file(config, version_path)
        if _files.sniff(config, path) != _files.EXPORTED:
            return
        inputs, outputs = _files.read_exported_signature(_torch(), path)
        _complete(config, inputs, outputs)
        _check_signature(config, inputs, outputs)

    def load(self) -> None:
        torch = self._torch = _torch()
        cfg = self.config
        path = _files.model_file(cfg, self.version_path)
        kind = _files.sniff(cfg, path)
        self._device = self._pick_device(torch)
        # intra-op threads are per calling thread (OpenMP): set them on this instance's thread
        self._threads = (
            int_parameter(cfg, "INTRA_OP_THREAD_COUNT", 0, minimum=1) or self.cpu_share()
        )
        torch.set_num_threads(self._threads)
        interop = int_parameter(cfg, "INTER_OP_THREAD_COUNT", 0, minimum=1)
        _set_interop_threads(torch, interop or None, cfg.name)
        self._grad_mode: Callable[[], Any] = (
            torch.inference_mode if bool_parameter(cfg, "INFERENCE_MODE", True) else torch.no_grad
        )
        self._optimized = not bool_parameter(cfg, "DISABLE_OPTIMIZED_EXECUTION", False)
        self._clean_cache = bool_parameter(cfg, "ENABLE_CACHE_CLEANING", False)
        opt = cfg.optimization
        self._pin_in = not opt.HasField("input_pinned_memory") or opt.input_pinned_memory.enable
        self._pin_out = not opt.HasField("output_pinned_memory") or opt.output_pinned_memory.enable
        on_gpu = self._device is not None and self._device.startswith("cuda")
        self._stream = torch.cuda.Stream(device=self._device) if on_gpu else None
        self._model = _files.load(
            torch, cfg, path, kind, None if self.instance.kind == "KIND_MODEL" else self._device
        )
        names = [io.name for io in cfg.input] + _implicit_inputs(cfg)
        self._binding = bind_inputs(cfg.name, names, self._model.arg_names, self._model.dict_input)
        if self._model.inputs is not None and self._model.outputs is not None:
            _check_signature(cfg, self._model.inputs, self._model.outputs)
        self._outputs = bind_outputs(cfg.name, [o.name for o in cfg.output])
        self._out_types = {o.name: config_to_protocol(config_datatype(o)) for o in cfg.output}
        self._strings = self._string_inputs()
        log.info(
            "instance %s of '%s': %s '%s' on %s, %d intra-op threads, inputs bound by %s",
            self.instance.name,
            cfg.name,
            kind,
            path,
            self._device or "its saved devices",
            self._threads,
            self._binding.convention,
        )

    def _pick_device(self, torch: Any) -> str | None:
        if self.instance.kind == "KIND_MODEL":
            return None
        if self.instance.kind != "KIND_GPU":
            return "cpu"
        index = max(self.instance.device_id, 0)
        if torch.cuda.is_available() and index < torch.cuda.device_count():
            return f"cuda:{index}"
        log.warning(
            "instance %s of '%s' is KIND_GPU (GPU %d) but torch %s sees %d CUDA "
            "device(s); it runs on the CPU",
            self.instance.name,
            self.config.name,
            index,
            torch.__version__,
            torch.cuda.device_count() if torch.cuda.is_available() else 0,
        )
        return "cpu"

    def _string_inputs(self) -> set[str]:
        """Config inputs of TYPE_STRING, checked against the model's List[str] arguments."""
        cfg, model, binding = self.config, self._model, self._binding
        strings = {io.name for io in cfg.input if config_datatype(io) == "TYPE_STRING"}
        for io in cfg.input:
            position = binding.positions.get(io.name)
            is_list = position is not None and position in model.string_args
            if (io.name in strings) != is_list and not binding.is_dict:
                want = "List[str]" if is_list else "Tensor"
                raise ModelLoadError(
                    f"model '{cfg.name}': input '{io.name}' is {config_datatype(io)} in the "
                    f"configuration but forward() takes a {want} there (strings are List[str])"
                )
            shape = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
            if io.name in strings and len(shape) + (cfg.max_batch_size > 0) != 1:
                raise ModelLoadError(
                    f"model '{cfg.name}': string input '{io.name}' must be one-dimensional "
                    "(a List[str]) including the batch dimension"
                )
        return strings

    # ---------------------------------------------------------------------------- execute

    def execute(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> Mapping[str, np.ndarray]:
        torch = self._torch
        if torch.get_num_threads() != self._threads:
            torch.set_num_threads(self._threads)
        stream = torch.cuda.stream(self._stream) if self._stream else contextlib.nullcontext()
        jit = (
            torch.jit.optimized_execution(False)
            if not self._optimized
            else contextlib.nullcontext()
        )
        names = list(outputs) or list(self._outputs)
        with stream, jit, self._grad_mode():
            args = self._arguments(inputs)
            call = self._model.call
            try:
                result = call(args) if self._binding.is_dict else call(*args)
            except Exception as exc:
                raise InternalError(
                    f"PyTorch execute failure in model '{self.config.name}': "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            values = {n: pick_output(self.config.name, result, n, self._outputs[n]) for n in names}
            produced = self._to_numpy(values)
        if self._clean_cache and self._stream is not None:
            torch.cuda.empty_cache()
        return produced

    def _arguments(self, inputs: Mapping[str, np.ndarray]) -> Any:
        binding = self._binding
        if binding.is_dict:
            return {name: self._tensor(name, array) for name, array in inputs.items()}
        args: list[Any] = [None] * binding.arity
        for name, array in inputs.items():
            args[binding.positions[name]] = self._tensor(name, array)
        return args

    def _tensor(self, name: str, array: np.ndarray) -> Any:
        """A torch view of ``array`` (no copy on the CPU), or a list of str for BYTES."""
        if name in self._strings:
            try:
                return [bytes(x).decode() for x in array.reshape(-1)]
            except UnicodeDecodeError as exc:
                raise InvalidArgument(
                    f"input '{name}' holds a string that is not valid UTF-8, "
                    f"which PyTorch's List[str] requires: {exc}"
                ) from None
        tensor = _shared_tensor(self._torch, array)
        if self._stream is None:
            return tensor
        if self._pin_in:
            return tensor.pin_memory().to(self._device, non_blocking=True)
        return tensor.to(self._device)

    def _to_numpy(self, values: dict[str, Any]) -> dict[str, np.ndarray]:
        torch = self._torch
        produced: dict[str, Any] = {}
        for name, value in values.items():
            if isinstance(value, list) and all(isinstance(s, str) for s in value):
                array = np.empty(len(value), dtype=object)
                array[:] = [s.encode() for s in value]
                produced[name] = array
                continue
            if not isinstance(value, torch.Tensor):
                raise InternalError(
                    f"output '{name}' of model '{self.config.name}' is a "
                    f"{type(value).__name__}, not a tensor or List[str]"
                )
            got, want = _files.protocol_of(value.dtype), self._out_types.get(name)
            if got != want:
                raise InternalError(
                    f"configuration expects datatype TYPE_{want} for output "
                    f"'{name}' of model '{self.config.name}', the model "
                    f"provides {value.dtype}"
                )
            if value.device.type != "cpu":
                host = torch.empty(value.shape, dtype=value.dtype, pin_memory=self._pin_out)
                value = host.copy_(value, non_blocking=self._pin_out)
            produced[name] = value
        if self._stream is not None:
            self._stream.synchronize()
        return {name: _numpy(value) for name, value in produced.items()}

    def unload(self) -> None:
        self._model = None  # type: ignore[assignment]
        if getattr(self, "_stream", None) is not None:
            self._torch.cuda.empty_cache()


def _shared_tensor(torch: Any, array: np.ndarray) -> Any:
    """A CPU tensor sharing ``array``'s memory; models must not modify their inputs in place.

    Request buffers are read-only arrays, which ``torch.from_numpy`` takes with a warning (torch
    has no read-only tensors); DLPack shares them silently. Where DLPack refuses read-only
    arrays (numpy < 2), the array is copied.
    """
    if array.flags.writeable:
        return torch.from_numpy(array)
    try:
        return torch.from_dlpack(array)
    except (BufferError, TypeError, RuntimeError):
        return torch.from_numpy(array.copy())


def _numpy(value: Any) -> np.ndarray:
    """numpy view of a CPU tensor (shares memory); a scalar becomes shape [1]."""
    array = value if isinstance(value, np.ndarray) else value.numpy()
    return array.reshape(1) if array.ndim == 0 else array


@naiad.hookimpl
def naiad_register_backends(registry: Any) -> None:
    registry.register(PyTorchBackend)
