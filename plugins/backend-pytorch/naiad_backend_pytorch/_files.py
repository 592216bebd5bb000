"""Reading PyTorch model files: TorchScript, ``torch.export`` programs, AOTInductor packages.

All three are zip archives; the kind is read from the archive's entries, then checked against
what the configuration expects (``.pt2`` for platform ``torch_aoti`` or a ``default_model_filename``
ending in ``.pt2``, TorchScript otherwise). torch is passed in by the caller, never imported here
at module level.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from naiad import ModelLoadError
from naiad.tensors import ModelTensor

TORCHSCRIPT = "TorchScript module"
EXPORTED = "torch.export program"
AOTI = "AOTInductor package"

#: ``str(torch.dtype)`` without ``torch.`` -> protocol datatype
TORCH_DATATYPES: dict[str, str] = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
    "uint64": "UINT64", "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "bfloat16": "BF16",
}  # fmt: skip


def protocol_of(dtype: Any) -> str:
    """The protocol datatype of a torch dtype, ``""`` when Triton has none."""
    return TORCH_DATATYPES.get(str(dtype).removeprefix("torch."), "")


@dataclass
class LoadedModel:
    """A model ready to call, and what it says about its signature."""

    kind: str
    #: called with positional tensors (or one dict when ``dict_input``)
    call: Callable[..., Any]
    #: forward()'s argument names without ``self``; None when the file does not record them
    arg_names: list[str] | None
    dict_input: bool = False
    #: positions of ``List[str]`` arguments (TorchScript), fed BYTES inputs as lists of str
    string_args: set[int] = field(default_factory=set)
    #: inputs / outputs with dtypes and shapes: known for torch.export programs only
    inputs: list[ModelTensor] | None = None
    outputs: list[ModelTensor] | None = None


def model_file(config: Any, version_path: Path) -> Path:
    """The model file named by the config (``model.pt`` / ``model.pt2`` by default)."""
    default = "model.pt2" if config.platform == "torch_aoti" else "model.pt"
    path = Path(version_path) / (config.default_model_filename or default)
    if not path.is_file():
        raise ModelLoadError(f"unable to find PyTorch model file '{path}'")
    return path


def sniff(config: Any, path: Path) -> str:
    """The kind of model in ``path``; :class:`ModelLoadError` when it is not a PyTorch archive
    or not the kind the configuration expects."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(
            f"PyTorch model file '{path}' is not a TorchScript or torch.export archive: {exc}"
        ) from None
    if any("/data/aotinductor/" in n for n in names):
        kind = AOTI
    elif any(n.endswith(("/models/model.json", "serialized_exported_program.json")) for n in names):
        kind = EXPORTED
    elif any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        kind = TORCHSCRIPT
    else:
        raise ModelLoadError(
            f"PyTorch model file '{path}' is a zip archive but neither TorchScript nor a "
            f"torch.export program (entries: {names[:6]})"
        )
    pt2 = config.platform == "torch_aoti" or path.name.endswith(".pt2")
    if pt2 and kind == TORCHSCRIPT:
        raise ModelLoadError(
            f"model '{config.name}': '{path.name}' holds a {kind}, but platform "
            f"'{config.platform}' / a .pt2 file name means a torch.export program or "
            "AOTInductor package; save it as model.pt with platform 'pytorch_libtorch'"
        )
    if not pt2 and kind != TORCHSCRIPT:
        raise ModelLoadError(
            f"model '{config.name}': '{path.name}' holds a {kind}, but platform "
            f"'{config.platform}' means TorchScript; name the file model.pt2 or set platform "
            "'torch_aoti'"
        )
    return kind


def load(torch: Any, config: Any, path: Path, kind: str, device: str | None) -> LoadedModel:
    """Load ``path`` (of ``kind``) onto ``device`` (None: where it was saved)."""
    try:
        if kind == TORCHSCRIPT:
            return _load_torchscript(torch, path, device)
        if kind == EXPORTED:
            return _load_exported(torch, path, device)
        return _load_aoti(torch, path, device)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"failed to load {kind} '{path}': {exc}") from exc


def _load_torchscript(torch: Any, path: Path, device: str | None) -> LoadedModel:
    module = torch.jit.load(str(path), map_location=device)
    module.eval()
    arguments = list(module.forward.schema.arguments)
    if arguments and arguments[0].type.kind() == "ClassType":
        arguments = arguments[1:]  # self
    kinds = [a.type.kind() for a in arguments]
    if len(arguments) == 1 and kinds[0] == "DictType":
        return LoadedModel(TORCHSCRIPT, module, [arguments[0].name], dict_input=True)
    strings = set()
    for i, arg in enumerate(arguments):
        text = str(arg.type)
        if text == "List[str]":
            strings.add(i)
        elif text not in ("Tensor", "Optional[Tensor]"):
            raise ModelLoadError(
                f"forward() argument '{arg.name}' of '{path}' has type {text}; naiad feeds "
                "Tensor, Optional[Tensor], List[str] or one Dict[str, Tensor]"
            )
    return LoadedModel(TORCHSCRIPT, module, [a.name for a in arguments], string_args=strings)


def _load_exported(torch: Any, path: Path, device: str | None) -> LoadedModel:
    program = torch.export.load(str(path))
    inputs, outputs, arg_names = exported_signature(torch, program, path)
    if device is not None and device != "cpu":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    module = program.module()
    return LoadedModel(EXPORTED, module, arg_names, inputs=inputs, outputs=outputs)


def _load_aoti(torch: Any, path: Path, device: str | None) -> LoadedModel:
    index = int(device.partition(":")[2] or 0) if device and device.startswith("cuda") else -1
    compiled = torch._inductor.aoti_load_package(str(path), device_index=index)
    return LoadedModel(AOTI, compiled, None)


def read_exported_signature(torch: Any, path: Path) -> tuple[list[ModelTensor], list[ModelTensor]]:
    """Inputs and outputs of the torch.export program in ``path`` (for auto-complete)."""
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise ModelLoadError(f"failed to load {EXPORTED} '{path}': {exc}") from exc
    inputs, outputs, _ = exported_signature(torch, program, path)
    return inputs, outputs


def exported_signature(
    torch: Any, program: Any, path: Path
) -> tuple[list[ModelTensor], list[ModelTensor], list[str]]:
    """(inputs, outputs, forward argument names) of an ExportedProgram.

    Inputs are named after forward()'s arguments; outputs after the keys of a dict result, or
    ``OUTPUT__<i>`` for a tuple/list (``OUTPUT__0`` for a single tensor). Nested structures and
    non-tensor arguments are refused.
    """
    from torch.export.graph_signature import InputKind, OutputKind

    nodes = {n.name: n for n in program.graph.nodes}
    user_in = [s for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    user_out = [s for s in program.graph_signature.output_specs if s.kind == OutputKind.USER_OUTPUT]
    in_spec, out_spec = program.call_spec.in_spec, program.call_spec.out_spec
    args_spec, kwargs_spec = _children(in_spec)
    if kwargs_spec.num_children or any(not c.is_leaf() for c in _children(args_spec)):
        raise ModelLoadError(
            f"{EXPORTED} '{path}' takes nested or keyword inputs; naiad feeds positional tensors"
        )
    if out_spec.is_leaf():
        out_names = ["OUTPUT__0"]
    elif any(not c.is_leaf() for c in _children(out_spec)):
        raise ModelLoadError(
            f"{EXPORTED} '{path}' returns nested structures; naiad reads a "
            "tensor, or a flat tuple, list or dict of tensors"
        )
    elif out_spec.type is dict:
        out_names = [str(k) for k in out_spec.context]
    else:
        out_names = [f"OUTPUT__{i}" for i in range(out_spec.num_children)]

    def tensor(name: str, node_name: str) -> ModelTensor:
        node = nodes.get(node_name)
        value = node.meta.get("val") if node is not None else None
        if value is None or not hasattr(value, "shape"):
            raise ModelLoadError(f"{EXPORTED} '{path}': '{name}' is not a tensor")
        dims = tuple(d if isinstance(d, int) else -1 for d in value.shape)
        return ModelTensor(name, protocol_of(value.dtype), dims)

    inputs = [tensor(s.arg.name, s.arg.name) for s in user_in]
    if len(user_out) != len(out_names):
        raise ModelLoadError(
            f"{EXPORTED} '{path}': {len(user_out)} tensor outputs for {len(out_names)} results"
        )
    outputs = [tensor(n, s.arg.name) for n, s in zip(out_names, user_out, strict=True)]
    return inputs, outputs, [t.name for t in inputs]


def _children(spec: Any) -> list[Any]:
    """A pytree spec's children (``children()`` in torch >= 2.10, ``children_specs`` before)."""
    children = getattr(spec, "children", None)
    return list(children() if callable(children) else spec.children_specs)
