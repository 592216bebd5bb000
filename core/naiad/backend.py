"""Base classes a backend plugin subclasses.

An :class:`InferenceBackend` object is **one instance** of one model version: naiad builds
``count`` of them per ``instance_group`` entry, each with its own worker thread, so a backend
never needs locks for its own state. Every method here is synchronous and runs off the event
loop.

The smallest useful backend::

    import naiad

    class Doubler(naiad.InferenceBackend):
        name = "doubler"

        def execute(self, inputs, outputs):
            return {"OUT": inputs["IN"] * 2}

    @naiad.hookimpl
    def naiad_register_backends(registry):
        registry.register(Doubler)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from .config import ModelConfig
    from .inference import InferRequest, InferResponse


@dataclass(frozen=True, slots=True)
class InstanceContext:
    """Where one instance runs."""

    #: e.g. ``"simple_0_1"``: instance group name, then the index within the group
    name: str
    #: ``"KIND_CPU"``, ``"KIND_GPU"`` or ``"KIND_MODEL"``
    kind: str
    #: GPU id for KIND_GPU, -1 otherwise
    device_id: int = -1

    @property
    def device(self) -> str:
        """``"cpu"`` or ``"cuda:N"``, the spelling most frameworks accept."""
        return "cpu" if self.kind != "KIND_GPU" else f"cuda:{self.device_id}"


class InferenceBackend:
    """One instance of a model, for frameworks that compute on batched tensors.

    Override :meth:`execute` (required), and :meth:`load` / :meth:`unload` when the model holds
    resources. Override the class method :meth:`auto_complete_config` when the framework can
    describe the model's inputs and outputs.

    Class attributes:

    - ``name``: Triton's backend name (config ``backend``), e.g. ``"onnxruntime"``.
    - ``platforms``: Triton platform names this backend serves (config ``platform``).
    - ``default_model_filename``: file (or folder) in the version folder, e.g. ``"model.onnx"``.
    - ``default_instance_count``: instances per CPU group when the config says none (Triton: 2
      for onnxruntime and tensorflow, 1 otherwise).
    """

    name: ClassVar[str] = ""
    platforms: ClassVar[tuple[str, ...]] = ()
    default_model_filename: ClassVar[str] = ""
    default_instance_count: ClassVar[int] = 1

    def __init__(
        self, config: ModelConfig, model_path: Path, version_path: Path, instance: InstanceContext
    ) -> None:
        #: the effective (auto-completed, normalised) config
        self.config = config
        #: ``<repository>/<model>``
        self.model_path = model_path
        #: ``<repository>/<model>/<version>``
        self.version_path = version_path
        self.instance = instance

    @property
    def model_file(self) -> Path:
        """The model file named by ``default_model_filename`` in the version folder."""
        filename = self.config.default_model_filename or self.default_model_filename
        return self.version_path / filename

    @classmethod
    def auto_complete_config(cls, config: ModelConfig, version_path: Path) -> None:
        """Fill what the config leaves out (inputs, outputs, max_batch_size) from the model file.

        Edit ``config`` in place; never override what the user wrote, and raise
        :class:`naiad.ModelLoadError` if the user's config contradicts the model. Called once
        per model version before any instance is built, off the event loop.
        """

    def load(self) -> None:
        """Load the model (import the framework here, not at module level)."""

    def execute(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> Mapping[str, np.ndarray]:
        """Run one batch.

        :param inputs: input name -> array. With ``max_batch_size > 0`` the first dimension is
            the batch (requests already concatenated); ``reshape`` has been applied.
        :param outputs: names of the outputs some request of the batch wants.
        :return: output name -> array with the same leading batch dimension. Extra outputs are
            ignored; a missing requested output is an error.
        """
        raise NotImplementedError(f"backend {type(self).__name__} does not implement execute()")

    def unload(self) -> None:
        """Release what :meth:`load` acquired."""


class CustomInstance(InferenceBackend):
    """One instance of a custom backend, which sees whole requests rather than a batched tensor.

    Override :meth:`execute_requests`. Each request's tensors keep their own shapes, so a custom
    step can take variable-size inputs (an image per request, say) and produce outputs of any
    shape; the scheduler still groups requests into one call when a batcher is configured.
    The model config's ``parameters`` are in ``self.parameters``.
    """

    @property
    def parameters(self) -> dict[str, str]:
        return {key: value.string_value for key, value in self.config.parameters.items()}

    def execute_requests(self, requests: Sequence[InferRequest]) -> list[InferResponse | Exception]:
        """Run a group of requests; return one response (or exception) per request, in order.

        The default calls :meth:`execute` once per request, which is all most custom steps need.
        """
        from .inference import InferResponse

        results: list[InferResponse | Exception] = []
        for request in requests:
            wanted = (
                [o.name for o in request.outputs]
                if request.outputs
                else [o.name for o in self.config.output]
            )
            try:
                produced = self.execute(request.inputs, wanted)
            except Exception as exc:  # one request's failure never fails its neighbours
                results.append(exc)
                continue
            results.append(
                InferResponse(request.model_name, request.model_version, request.id, dict(produced))
            )
        return results
