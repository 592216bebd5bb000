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

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

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
    #: the server's calls for model code (BLS, model control, custom metrics):
    #: a :class:`naiad.tritonpy.host.Host`, None outside a server
    host: Any = field(default=None, compare=False, repr=False)

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

    def cpu_share(self) -> int:
        """This process's usable CPUs divided among this model's instances (at least 1).

        A fair default for a framework's intra-op thread count: the instances of all
        ``instance_group`` entries are counted (``count`` per GPU for ``KIND_GPU`` groups), and
        usable CPUs respect taskset / cgroup CPU sets. Other models are not taken into account.
        """
        if hasattr(os, "sched_getaffinity"):
            cpus = len(os.sched_getaffinity(0))
        else:  # pragma: no cover - macOS, Windows
            cpus = os.cpu_count() or 1
        default = type(self).default_instance_count
        instances = sum(
            (g.count or default) * (len(g.gpus) or 1) for g in self.config.instance_group
        )
        return max(1, cpus // max(1, instances or default))

    @classmethod
    def auto_complete_config(cls, config: ModelConfig, version_path: Path) -> None:
        """Fill what the config leaves out (inputs, outputs, max_batch_size) from the model file.

        Edit ``config`` in place; never override what the user wrote, and raise
        :class:`naiad.ModelLoadError` if the user's config contradicts the model. Called once
        per model version before any instance is built, off the event loop.
        """

    @classmethod
    def default_isolation(cls, config: ModelConfig, version_path: Path) -> str:
        """Where instances run when the config's ``instance_isolation`` parameter says nothing:
        ``"thread"`` (in the server process, on the instance's own thread) or ``"process"``
        (each instance in a process of its own). Triton python models say ``"process"``."""
        return "thread"

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

    def not_ready_reason(self) -> str:
        """Why this instance cannot serve now ('' when it can). Asked on the event loop at each
        model-readiness check: answer from state at hand, never block."""
        return ""

    def readiness_check(self) -> Callable[[], None] | None:
        """A check of the instance's own readiness, or None (the default: the registry's state
        stands). The check blocks (it runs on a pool thread, within 5 s, and raises a
        :class:`naiad.NaiadError` with the reason when the instance is not ready); only models
        that have one pay a thread hop per readiness check (``naiad.readiness``)."""
        return None


class CustomInstance(InferenceBackend):
    """One instance of a custom backend: your own Python code as a model, seeing whole requests.

    Where :class:`InferenceBackend` gets one batched tensor per input, a custom instance gets the
    *requests* the scheduler grouped together, each with its own tensors and shapes. That suits
    steps that work item by item (decode an image, tokenize a string), take variable-size inputs,
    or call another library per request. It is the Python counterpart of TRTIS's ``CustomInstance``
    (``Create`` / ``Execute`` / destructor) and of the ``initialize`` / ``execute`` / ``finalize``
    of Triton's Python backend.

    Override, all optional but one of the two ``execute`` methods:

    - :meth:`initialize`: check ``self.config`` and read ``self.parameters`` (the config's
      ``parameters``); acquire resources. Raise :class:`naiad.ModelLoadError` with a message that
      names what is wrong, and the model becomes UNAVAILABLE with that reason.
    - :meth:`execute`: one request's inputs -> its outputs. The default
      :meth:`execute_requests` calls it once per request, and one request's failure never
      fails the others of its group.
    - :meth:`execute_requests`: the whole group at once, when batching pays off (stack the
      requests' tensors, run once, split the results).
    - :meth:`finalize`: release what :meth:`initialize` acquired.

    Every method runs on the instance's own worker thread, never on the event loop, so blocking
    work (decoding, file reads, a framework call) is fine, and an instance never sees two calls at
    once. Each instance is a separate object (``instance_group`` count), so instance state needs no
    locks. An input of a request has the request's full shape: with ``max_batch_size > 0`` its
    first dimension is that request's batch size. Return outputs with the same leading batch
    dimension; naiad converts them to the config's data types, checks their shapes against the
    config, and answers with an error naming the model and the output when they do not fit.

    Select a custom backend in ``config.pbtxt`` with ``backend: "<name>"`` (the class's
    ``name``), or ``platform: "custom"`` / ``backend: "python"`` for a ``model.py`` in the version
    folder (see ``docs/writing-a-backend.md``).
    """

    @property
    def parameters(self) -> dict[str, str]:
        """The config's ``parameters``, as ``key -> string_value``."""
        return {key: value.string_value for key, value in self.config.parameters.items()}

    def initialize(self) -> None:
        """Set the instance up from ``self.config`` and ``self.parameters`` (TRTIS: ``Create``).

        Called once, on the instance's thread, before any request.
        """

    def finalize(self) -> None:
        """Release what :meth:`initialize` acquired (TRTIS: the destructor). Called once."""

    def load(self) -> None:
        """Calls :meth:`initialize`; custom backends override that instead."""
        self.initialize()

    def unload(self) -> None:
        """Calls :meth:`finalize`; custom backends override that instead."""
        self.finalize()

    def execute(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> Mapping[str, np.ndarray]:
        """Run one request.

        :param inputs: input name -> array with the request's own shape (batch dimension first
            when ``max_batch_size > 0``). BYTES tensors are numpy object arrays of ``bytes``.
        :param outputs: the output names this request wants.
        :return: output name -> array. Outputs not asked for are dropped; a missing one is an
            error. Raise :class:`naiad.InvalidArgument` for a bad request (HTTP 400); any other
            exception becomes an internal error (HTTP 500) naming the model.
        """
        raise NotImplementedError(
            f"custom backend {type(self).__name__} implements neither execute() nor "
            "execute_requests()"
        )

    def execute_requests(self, requests: Sequence[InferRequest]) -> list[InferResponse | Exception]:
        """Run a group of requests; return one response (or exception) per request, in order.

        The group has one request unless the model has ``dynamic_batching`` and several requests
        were waiting (TRTIS's payloads of one ``Execute`` call). The default calls
        :meth:`execute` once per request, which is all most custom steps need. Return an
        exception in a request's place to fail that request alone; raising fails the group.
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
