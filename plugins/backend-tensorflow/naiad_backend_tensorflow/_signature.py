"""TensorFlow model signatures and Triton's auto-complete rules for SavedModels.

A SavedModel's signature (``serving_default`` or the one named by ``TF_SIGNATURE_DEF``) is read
straight from ``saved_model.pb``: no session, no variables. Config names are the signature's
keys; each maps to a graph tensor name (``serving_default_x:0``). A GraphDef has no signature:
config names are graph tensor names (``input`` or ``input:0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from naiad import ModelLoadError
from naiad.tensors import (
    ModelTensor,
    check_config_tensor,
    fill_config_tensor,
)

#: max_batch_size auto-complete gives a SavedModel that can batch (Triton's default-max-batch-size)
DEFAULT_MAX_BATCH_SIZE = 4
DEFAULT_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"

#: ``tf.DType.name`` -> protocol datatype
TF_DATATYPES: dict[str, str] = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
    "uint64": "UINT64", "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "bfloat16": "BF16",
    "string": "BYTES",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Signature:
    """A model's inputs and outputs by config name, with the graph tensor behind each."""

    inputs: dict[str, ModelTensor]
    outputs: dict[str, ModelTensor]
    #: config name -> graph tensor name (``"serving_default_x:0"``)
    graph_names: dict[str, str]


def protocol_of(tf: Any, dtype: Any) -> str:
    """Protocol datatype of a TF dtype (DType or DataType enum value), ``""`` if none."""
    try:
        return TF_DATATYPES.get(tf.dtypes.as_dtype(dtype).name, "")
    except TypeError:
        return ""


def _dims(shape: Any) -> tuple[int, ...] | None:
    """A TensorShapeProto as dims (-1 unknown), None for an unknown rank."""
    if shape.unknown_rank:
        return None
    return tuple(int(d.size) if d.size >= 0 else -1 for d in shape.dim)


def saved_model_file(config: Any, version_path: Path) -> Path:
    path = Path(version_path) / (config.default_model_filename or "model.savedmodel")
    if not path.is_dir():
        raise ModelLoadError(f"unable to find SavedModel folder '{path}'")
    return path


def graphdef_file(config: Any, version_path: Path) -> Path:
    path = Path(version_path) / (config.default_model_filename or "model.graphdef")
    if not path.is_file():
        raise ModelLoadError(f"unable to find GraphDef file '{path}'")
    return path


def read_meta_graph(tf: Any, path: Path, tag: str | None) -> Any:
    """The MetaGraphDef of ``path`` with ``tag`` (default ``serve``, or the only one)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    try:
        if (path / "saved_model.pb").is_file():
            saved.ParseFromString((path / "saved_model.pb").read_bytes())
        elif (path / "saved_model.pbtxt").is_file():
            text_format.Parse((path / "saved_model.pbtxt").read_text(), saved)
        else:
            raise ModelLoadError(f"SavedModel folder '{path}' has no saved_model.pb")
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"failed to read SavedModel '{path}': {exc}") from exc
    graphs = list(saved.meta_graphs)
    wanted = tag or DEFAULT_TAG
    for graph in graphs:
        if wanted in graph.meta_info_def.tags:
            return graph
    if tag is None and len(graphs) == 1:
        return graphs[0]
    found = [list(g.meta_info_def.tags) for g in graphs]
    raise ModelLoadError(
        f"SavedModel '{path}' has no graph tagged '{wanted}' (TF_GRAPH_TAG); its tags: {found}"
    )


def signature_of(tf: Any, meta_graph: Any, name: str | None, path: Path) -> Signature:
    """The signature ``name`` (default ``serving_default``) of a MetaGraphDef."""
    wanted = name or DEFAULT_SIGNATURE
    if wanted not in meta_graph.signature_def:
        found = sorted(k for k in meta_graph.signature_def if not k.startswith("__"))
        raise ModelLoadError(
            f"SavedModel '{path}' has no signature '{wanted}' "
            f"(TF_SIGNATURE_DEF); its signatures: {found}"
        )
    sig = meta_graph.signature_def[wanted]
    names: dict[str, str] = {}
    sections: list[dict[str, ModelTensor]] = []
    for infos in (sig.inputs, sig.outputs):
        tensors = {}
        for key in sorted(infos):
            info = infos[key]
            if not info.name:
                raise ModelLoadError(
                    f"signature '{wanted}' of '{path}': '{key}' is a "
                    "composite (sparse or ragged) tensor, which naiad cannot feed"
                )
            tensors[key] = ModelTensor(key, protocol_of(tf, info.dtype), _dims(info.tensor_shape))
            names[key] = info.name
        sections.append(tensors)
    return Signature(sections[0], sections[1], names)


def graphdef_signature(tf: Any, graph: Any, config: Any) -> Signature:
    """The config's tensors looked up in an imported GraphDef (``x`` means ``x:0``)."""
    if not len(config.input) or not len(config.output):
        raise ModelLoadError(
            f"model '{config.name}': a GraphDef carries no signature, so its config must list "
            f"inputs and outputs; the graph's placeholders are {_placeholders(graph)}"
        )
    sections: list[dict[str, ModelTensor]] = []
    names: dict[str, str] = {}
    for kind, section in (("input", config.input), ("output", config.output)):
        tensors = {}
        for io in section:
            tensor_name = io.name if ":" in io.name else f"{io.name}:0"
            try:
                tensor = graph.get_tensor_by_name(tensor_name)
            except (KeyError, ValueError):
                hint = f"; its placeholders: {_placeholders(graph)}" if kind == "input" else ""
                raise ModelLoadError(
                    f"model '{config.name}': {kind} '{io.name}' is not a tensor "
                    f"of the GraphDef{hint}"
                ) from None
            dims = (
                None
                if tensor.shape.rank is None
                else tuple(-1 if d is None else int(d) for d in tensor.shape.as_list())
            )
            tensors[io.name] = ModelTensor(io.name, protocol_of(tf, tensor.dtype), dims)
            names[io.name] = tensor_name
        sections.append(tensors)
    return Signature(sections[0], sections[1], names)


def _placeholders(graph: Any) -> list[str]:
    return [op.name for op in graph.get_operations() if op.type == "Placeholder"]


def implicit_inputs(config: Any) -> set[str]:
    """Model inputs the scheduler feeds: sequence controls and states, batch inputs."""
    seq = config.sequence_batching
    return (
        {c.name for c in seq.control_input}
        | {s.input_name for s in seq.state}
        | {t for b in config.batch_input for t in b.target_name}
    )


def _config_dims(io: Any) -> list[int]:
    return list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)


def complete(config: Any, sig: Signature) -> None:
    """Triton's tensorflow auto-complete for a SavedModel, in place.

    The signature *can batch* when every input and output has a variable first dimension. A
    config ``max_batch_size > 0`` for one that cannot fails. With ``max_batch_size`` 0 and a
    batchable signature, the dims of listed tensors hint whether the user batches (model rank =
    dims + 1) or not; without hints it batches: ``max_batch_size`` becomes 4. Then, with
    ``max_batch_size > 1`` and no scheduler, ``dynamic_batching {}`` is added. Missing inputs
    are added, outputs only when none are listed, and listed entries get what they leave out.
    """
    model, mbs = config.name, config.max_batch_size
    everything = list(sig.inputs.values()) + list(sig.outputs.values())
    batchable = all(t.batchable for t in everything)
    if mbs > 0 and not batchable:
        fixed = [t.name for t in everything if not t.batchable]
        raise ModelLoadError(
            f"model '{model}': max_batch_size is {mbs} but the SavedModel "
            f"signature cannot batch: {fixed} have no variable first dimension"
        )
    if batchable and mbs == 0:
        hint: bool | None = None
        for section, tensors in ((config.input, sig.inputs), (config.output, sig.outputs)):
            for io in section:
                dims, tensor = _config_dims(io), tensors.get(io.name)
                if not dims or tensor is None or tensor.dims is None:
                    continue
                batches = len(tensor.dims) == len(dims) + 1
                if hint is not None and hint != batches:
                    raise ModelLoadError(
                        f"model '{model}': the configured tensors contradict "
                        "each other about whether the model batches"
                    )
                hint = batches
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE if hint in (None, True) else 0
    if config.max_batch_size > 1 and not (
        config.HasField("dynamic_batching") or config.HasField("sequence_batching")
    ):
        config.dynamic_batching.SetInParent()
    implicit = implicit_inputs(config)
    given = {io.name for io in config.input} | implicit
    for name in sig.inputs:
        if name not in given:
            config.input.add(name=name)
    if not len(config.output):
        for name in sig.outputs:
            config.output.add(name=name)
    for section, tensors in ((config.input, sig.inputs), (config.output, sig.outputs)):
        for io in section:
            if io.name in tensors:
                fill_config_tensor(io, tensors[io.name], config.max_batch_size)


def check(config: Any, sig: Signature, framework: str) -> None:
    """Every configured tensor exists in the model and matches it; every model input is fed."""
    for kind, section, tensors in (
        ("input", config.input, sig.inputs),
        ("output", config.output, sig.outputs),
    ):
        for io in section:
            if io.name not in tensors:
                raise ModelLoadError(
                    f"model '{config.name}': configuration {kind} '{io.name}' "
                    f"is not in the {framework} signature; its {kind}s are "
                    f"{sorted(tensors)}"
                )
            check_config_tensor(
                config.name, kind, io, tensors[io.name], config.max_batch_size, framework
            )
    missing = sorted(set(sig.inputs) - {io.name for io in config.input} - implicit_inputs(config))
    if missing:
        raise ModelLoadError(
            f"model '{config.name}': {framework} inputs {missing} are missing "
            "from the configuration"
        )
