"""Caffe2 NetDef backend for naiad: Triton's platform ``caffe2_netdef`` (backend ``caffe2``).

A model is a pair of NetDef files in the version folder, ``model.netdef`` (the predict net) and
``init_model.netdef`` (the init net that fills the weights). At load time the pair is converted
once into an ONNX graph (:mod:`.convert`, :mod:`.ops`), which onnxruntime then runs exactly as
naiad-backend-onnx runs a ``model.onnx``: same session options, threads, devices and checks of the
config against the model (this class *is* that backend, fed a graph built in memory). Inputs and
outputs are blobs named as in config.pbtxt. README.md lists the supported operators.
"""

from __future__ import annotations

from pathlib import Path

import naiad
from naiad import ModelLoadError
from naiad.tensors import (
    NUMPY_DTYPES,
    ModelTensor,
    config_datatype,
    config_to_protocol,
    fill_config_tensor,
    numpy_to_protocol,
)
from naiad_backend_onnx import OnnxBackend

from .convert import InputSpec, to_onnx
from .netdef import INIT_PREFIX, NetPair, read_pair

__all__ = ["INIT_PREFIX", "Caffe2Backend", "naiad_register_backends"]

DEFAULT_MODEL_FILENAME = "model.netdef"
#: the batch dimension's name in the converted graph
BATCH = "batch"


def _pair(config, version_path: Path) -> NetPair:
    return read_pair(version_path, config.default_model_filename or DEFAULT_MODEL_FILENAME)


def _input_specs(config, pair: NetPair) -> list[InputSpec]:
    """The graph inputs: the config's inputs with their data types and dims (NetDef files
    record neither), the batch dimension first when the model batches."""
    from onnx import helper

    if not config.input:
        net = pair.predict
        candidates = [b for b in net.external_input if b not in pair.weights]
        raise ModelLoadError(
            f"model '{config.name}': a Caffe2 NetDef records no input types or shapes; list the "
            f"inputs in config.pbtxt (the predict net's external inputs that are not weights: "
            f"{candidates})"
        )
    specs = []
    for io in config.input:
        datatype = config_to_protocol(config_datatype(io))
        if datatype in ("BYTES", "BF16", "INVALID"):
            raise ModelLoadError(
                f"model '{config.name}': input '{io.name}' has data_type "
                f"{config_datatype(io)}, which the caffe2 backend cannot feed"
            )
        dims = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
        full = ([BATCH] if config.max_batch_size > 0 else []) + [
            d if d >= 0 else f"{io.name}_{i}" for i, d in enumerate(dims)
        ]
        elem = helper.np_dtype_to_tensor_dtype(NUMPY_DTYPES[datatype])
        specs.append(InputSpec(io.name, elem, tuple(full)))
    return specs


def _output_names(config, pair: NetPair) -> list[str]:
    names = [io.name for io in config.output] or list(pair.predict.external_output)
    if not names:
        raise ModelLoadError(
            f"model '{config.name}': the predict net declares no "
            "external_output; list the outputs in config.pbtxt"
        )
    return names


def build_onnx(config, version_path: Path):
    """The model's NetDef pair as an ONNX ModelProto, outputs typed by shape inference."""
    pair = _pair(config, version_path)
    return to_onnx(pair, _input_specs(config, pair), _output_names(config, pair))


class Caffe2Backend(OnnxBackend):
    """One onnxruntime session per instance, over the graph converted from the NetDef pair."""

    name = "caffe2"
    platforms = ("caffe2_netdef",)
    default_model_filename = DEFAULT_MODEL_FILENAME
    # Triton's default of one instance per group (the onnxruntime backend's two is its own)
    default_instance_count = 1

    @classmethod
    def auto_complete_config(cls, config, version_path: Path) -> None:
        """Outputs from the net's ``external_output``, typed by ONNX shape inference over the
        converted graph; inputs must be in the config (a NetDef has no shapes for them)."""
        if config.input and config.output:
            return  # every instance's load() checks the config against the converted graph
        from onnx import helper

        model = build_onnx(config, version_path)
        for out in model.graph.output:
            tensor = out.type.tensor_type
            dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else None
            dims = None
            if tensor.HasField("shape"):
                dims = tuple(
                    d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim
                )
            datatype = numpy_to_protocol(dtype) if dtype is not None else ""
            fill_config_tensor(
                config.output.add(name=out.name),
                ModelTensor(out.name, datatype, dims),
                config.max_batch_size,
            )

    def model_source(self) -> bytes:
        return build_onnx(self.config, self.version_path).SerializeToString()


@naiad.hookimpl
def naiad_register_backends(registry) -> None:
    registry.register(Caffe2Backend)
