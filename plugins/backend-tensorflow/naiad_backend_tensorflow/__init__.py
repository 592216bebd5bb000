"""naiad's TensorFlow backend: Triton backend ``tensorflow``, platforms
``tensorflow_savedmodel`` (folder ``model.savedmodel/``) and ``tensorflow_graphdef`` (frozen graph
``model.graphdef``).

Each instance runs its model in its own ``tf.compat.v1.Session`` through a callable made once per
set of feeds and fetches, as Triton's backend does with TF's C++ API. tensorflow is imported only
when such a model loads. README.md describes the behaviour: signatures, auto-complete, threads,
GPU memory, parameters.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import naiad
import numpy as np
from naiad import InferenceBackend, InternalError, InvalidArgument, ModelLoadError
from naiad.config.parameters import (
    bool_parameter,
    float_parameter,
    int_parameter,
    parameter,
)

from . import _signature
from ._signature import DEFAULT_MAX_BATCH_SIZE, Signature

__all__ = ["DEFAULT_MAX_BATCH_SIZE", "TensorFlowBackend", "naiad_register_backends"]

log = logging.getLogger(__name__)

SAVEDMODEL = "tensorflow_savedmodel"
GRAPHDEF = "tensorflow_graphdef"


def _tf() -> Any:
    try:
        import tensorflow as tf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelLoadError(
            f"the tensorflow backend cannot import tensorflow: {exc} "
            "(pip install tensorflow-cpu, or tensorflow[and-cuda] for GPUs)"
        ) from exc
    return tf


def session_config(tf: Any, config: Any, on_gpu: bool) -> Any:
    """The ConfigProto of one instance's session (threads, placement, GPU memory)."""
    proto = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    proto.intra_op_parallelism_threads = int_parameter(config, "TF_NUM_INTRA_THREADS", 0, minimum=0)
    proto.inter_op_parallelism_threads = int_parameter(config, "TF_NUM_INTER_THREADS", 0, minimum=0)
    proto.use_per_session_threads = bool_parameter(config, "TF_USE_PER_SESSION_THREADS", False)
    if not on_gpu:
        proto.device_count["GPU"] = 0  # a CPU instance never touches (or reserves) GPU memory
    fraction = float_parameter(config, "TF_GPU_MEMORY_FRACTION", 0.0, low=0.0, high=1.0)
    if fraction > 0:  # a fixed share, as Triton's gpu-memory-fraction (growth off)
        proto.gpu_options.per_process_gpu_memory_fraction = fraction
        proto.gpu_options.allow_growth = False
    else:  # never grab all GPU memory up front
        proto.gpu_options.allow_growth = bool_parameter(config, "TF_GPU_MEMORY_GROWTH", True)
    level = config.optimization.graph.level if config.HasField("optimization") else 0
    if level == -1:  # Triton: -1 turns graph optimisations off
        proto.graph_options.optimizer_options.opt_level = -1
    return proto


class TensorFlowBackend(InferenceBackend):
    """One TensorFlow session per instance."""

    name = "tensorflow"
    platforms = (SAVEDMODEL, GRAPHDEF)
    default_model_filename = "model.savedmodel"
    # Triton's default for CPU groups of tensorflow models: 2 instances (they share TF's
    # process-wide thread pools unless TF_USE_PER_SESSION_THREADS is set)
    default_instance_count = 2

    @classmethod
    def auto_complete_config(cls, config: Any, version_path: Path) -> None:
        """SavedModels: fill inputs, outputs and max_batch_size from the signature (Triton's
        rules); GraphDefs carry no signature, so nothing is filled (as in Triton)."""
        if config.platform == GRAPHDEF:
            return
        tf = _tf()
        path = _signature.saved_model_file(config, version_path)
        meta = _signature.read_meta_graph(tf, path, parameter(config, "TF_GRAPH_TAG"))
        sig = _signature.signature_of(tf, meta, parameter(config, "TF_SIGNATURE_DEF"), path)
        _signature.complete(config, sig)
        _signature.check(config, sig, "SavedModel")

    def load(self) -> None:
        tf = self._tf = _tf()
        cfg = self.config
        on_gpu = self._on_gpu(tf)
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(
            graph=self._graph, config=session_config(tf, cfg, on_gpu)
        )
        device = (
            tf.device(f"/device:GPU:{max(self.instance.device_id, 0)}")
            if on_gpu
            else contextlib.nullcontext()
        )
        with self._graph.as_default(), device:
            if cfg.platform == GRAPHDEF:
                path = _signature.graphdef_file(cfg, self.version_path)
                self._import_graphdef(tf, path)
                self._sig = _signature.graphdef_signature(tf, self._graph, cfg)
                framework = "GraphDef"
            else:
                path = _signature.saved_model_file(cfg, self.version_path)
                self._sig = self._load_saved_model(tf, path, clear_devices=on_gpu)
                framework = "SavedModel"
        _signature.check(cfg, self._sig, framework)
        self._all_outputs = tuple(o.name for o in cfg.output)
        self._callables: dict[tuple[tuple[str, ...], tuple[str, ...]], Callable[..., Any]] = {}
        log.info(
            "instance %s of '%s': %s '%s' on %s",
            self.instance.name,
            cfg.name,
            framework,
            path,
            f"GPU {self.instance.device_id}" if on_gpu else "the CPU",
        )

    def _on_gpu(self, tf: Any) -> bool:
        if self.instance.kind != "KIND_GPU":
            return False
        gpus = tf.config.list_physical_devices("GPU")
        if max(self.instance.device_id, 0) < len(gpus):
            return True
        log.warning(
            "instance %s of '%s' is KIND_GPU (GPU %d) but TensorFlow sees %d GPU(s) "
            "(tensorflow-cpu?); it runs on the CPU",
            self.instance.name,
            self.config.name,
            self.instance.device_id,
            len(gpus),
        )
        return False

    def _import_graphdef(self, tf: Any, path: Path) -> None:
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(path.read_bytes())
            tf.graph_util.import_graph_def(graph_def, name="")
        except Exception as exc:
            raise ModelLoadError(f"failed to load GraphDef '{path}': {exc}") from exc

    def _load_saved_model(self, tf: Any, path: Path, clear_devices: bool) -> Signature:
        meta = _signature.read_meta_graph(tf, path, parameter(self.config, "TF_GRAPH_TAG"))
        sig = _signature.signature_of(tf, meta, parameter(self.config, "TF_SIGNATURE_DEF"), path)
        try:
            tf.compat.v1.saved_model.loader.load(
                self._session, list(meta.meta_info_def.tags), str(path), clear_devices=clear_devices
            )
        except Exception as exc:
            raise ModelLoadError(f"failed to load SavedModel '{path}': {exc}") from exc
        return sig

    def _callable(self, feeds: tuple[str, ...], fetches: tuple[str, ...]) -> Callable[..., Any]:
        key = (feeds, fetches)
        fn = self._callables.get(key)
        if fn is None:
            names = self._sig.graph_names
            fn = self._session.make_callable([names[n] for n in fetches], [names[n] for n in feeds])
            self._callables[key] = fn
        return fn

    def execute(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> Mapping[str, np.ndarray]:
        feeds = tuple(inputs)
        fetches = tuple(outputs) or self._all_outputs
        fn = self._callable(feeds, fetches)
        try:
            results = fn(*inputs.values())
        except (self._tf.errors.InvalidArgumentError, ValueError) as exc:  # bad values, shapes
            message = getattr(exc, "message", None) or str(exc)
            raise InvalidArgument(
                f"tensorflow error in model '{self.config.name}': {message}"
            ) from exc
        except Exception as exc:
            raise InternalError(
                f"tensorflow error in model '{self.config.name}': {type(exc).__name__}: {exc}"
            ) from exc
        # session results are numpy arrays over TF's buffers (no copy); tf.string comes back as
        # an object array of bytes, which is naiad's BYTES form
        return {
            name: value.reshape(1) if value.ndim == 0 else value
            for name, value in zip(fetches, results, strict=True)
        }

    def unload(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            session.close()
        self._session = self._graph = None


@naiad.hookimpl
def naiad_register_backends(registry: Any) -> None:
    registry.register(TensorFlowBackend)
