"""What the server does, independent of any transport.

The V2 HTTP routes, the legacy TRTIS ``/api`` routes and the gRPC service all call into one
:class:`DataPlane`; nothing here knows about HTTP or gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import __version__, readiness
from .config import ModelConfig, model_config_from_json, model_config_to_json
from .errors import InternalError, InvalidArgument, NaiadError, NotFound, Unavailable, Unsupported
from .inference import InferRequest, InferResponse
from .models import ModelManager, ModelState, ModelVersion
from .scheduling import Scheduler
from .shm import SharedMemoryManager
from .signature import Signature
from .streaming import ResponseStream, StreamClosed
from .tensors import numpy_to_protocol
from .trace import TraceSettings

EXTENSIONS = [
    "classification",
    "sequence",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "system_shared_memory",
    "cuda_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
]


class ControlMode(str, enum.Enum):
    NONE = "none"
    POLL = "poll"
    EXPLICIT = "explicit"


@dataclass
class ServerOptions:
    server_id: str = "triton"
    strict_readiness: bool = True
    control_mode: ControlMode = ControlMode.NONE
    extensions: list[str] = field(default_factory=lambda: list(EXTENSIONS))
    #: ``--allow-client-shm``: shared memory register/unregister allowed (naiad's default: yes)
    allow_client_shm: bool = True


class DataPlane:
    def __init__(
        self,
        models: ModelManager,
        options: ServerOptions | None = None,
        *,
        shm: SharedMemoryManager | None = None,
        trace: TraceSettings | None = None,
    ) -> None:
        self.models = models
        self.options = options or ServerOptions()
        #: registered system shared memory regions (the ``system_shared_memory`` extension)
        self.shm = shm if shm is not None else SharedMemoryManager()
        #: trace settings (stored and reported; requests are not traced yet)
        self.trace = trace if trace is not None else TraceSettings()
        #: set once start-up loading finished; cleared when shutting down
        self.started = False
        #: set on SIGTERM: health answers "Server exiting", new inferences are refused
        self.exiting = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # ---- health and metadata -------------------------------------------------------------------

    def live(self) -> bool:
        return not self.exiting

    def health(self, ready: bool) -> bool:
        """Readiness (``ready``) or liveness; Unavailable "Server exiting" once shutdown began."""
        if self.exiting:
            raise Unavailable("Server exiting")
        return self.ready() if ready else self.live()

    def ready(self) -> bool:
        if not self.started or self.exiting:
            return False
        return self.models.all_ready() if self.options.strict_readiness else True

    def server_metadata(self) -> dict:
        return {
            "name": self.options.server_id,
            "version": __version__,
            "extensions": self.options.extensions,
        }

    def model_ready(self, name: str, version: int = -1) -> bool:
        """The registry's answer alone (READY or not): what model code's ``is_model_ready`` sees."""
        try:
            self.models.resolve(name, version)
        except (NotFound, Unavailable):
            return False
        return True

    def model_ready_now(self, mv: ModelVersion) -> bool | None:
        """``mv``'s readiness when known at once, on the loop; None when an instance's own
        check (a Triton model's ``is_ready``) must run: then await :meth:`model_ready_checked`."""
        return readiness.ready_now(mv)

    async def model_ready_checked(self, name: str, version: int = -1) -> bool:
        """Model readiness as HTTP ``/ready`` and gRPC ModelReady answer it: the registry, then
        every instance's own say (off the loop, 5 s at most)."""
        try:
            mv = self.models.resolve(name, version)
        except (NotFound, Unavailable):
            return False
        return await readiness.ready(mv)

    def model_metadata(self, name: str, version: int = -1) -> dict:
        config, sig, _ = _serving(self.models.resolve(name, version))
        if version >= 0:
            versions = [str(version)]
        else:
            versions = [
                str(v)
                for v, m in sorted(self.models.versions(name).items())
                if m.state is ModelState.READY
            ]
        return {
            "name": name,
            "versions": versions,
            "platform": config.platform or config.backend,
            "inputs": [
                {"name": s.name, "datatype": s.datatype, "shape": sig.full_shape(s)}
                for s in sig.inputs.values()
            ],
            "outputs": [
                {"name": s.name, "datatype": s.datatype, "shape": sig.full_shape(s)}
                for s in sig.outputs.values()
            ],
        }

    def model_config(self, name: str, version: int = -1) -> dict:
        return model_config_to_json(self.model_config_message(name, version))

    def model_config_message(self, name: str, version: int = -1) -> ModelConfig:
        """The effective (auto-completed) config, as the ModelConfig message."""
        return _serving(self.models.resolve(name, version))[0]

    # ---- inference -----------------------------------------------------------------------------

    def resolve(self, name: str, version: int = -1) -> ModelVersion:
        return self.models.resolve(name, version)

    async def infer(
        self, request: InferRequest, mv: ModelVersion | None = None, *, validated: bool = False
    ) -> InferResponse:
        """Validate, schedule and post-process one request.

        ``validated``: the caller already validated a request of exactly this form (names,
        datatypes, shapes, outputs) against ``mv``'s signature and set its batch size — the
        HTTP edge's cache of binary headers (:mod:`naiad.plans`) does, once per header.
        """
        if self.exiting:
            raise Unavailable("Server exiting")
        if mv is None:
            mv = self.models.resolve(request.model_name, request.model_version)
        if mv.decoupled:
            raise Unsupported(
                f"model '{mv.name}' uses the decoupled transaction policy: its responses are "
                "streamed (infer_stream)"
            )
        sig, scheduler = mv.signature, mv.scheduler
        if sig is None or scheduler is None or mv.config is None:
            _serving(mv)  # raises: not ready
            raise AssertionError  # pragma: no cover
        if not validated:
            sig.validate(request)
        # _counted without its generator: this is every request's path
        self._begin()
        try:
            response = await scheduler.infer(request)
        finally:
            self._end()
        response.model_version = mv.version
        self._finish(request, response, sig, mv.labels)
        return response

    async def infer_stream(
        self, request: InferRequest, mv: ModelVersion | None = None
    ) -> AsyncGenerator[InferResponse, None]:
        """The responses of one request, in order; the last has ``final=True``.

        A non-decoupled model yields exactly one response. A decoupled model yields 0..N, the
        last final (with no outputs when the model sent only the final flag: transports drop
        it unless the client asked for empty final responses). Raises :class:`NaiadError` on
        failure, possibly after some responses. Closing the iterator early cancels the request.
        """
        if self.exiting:
            raise Unavailable("Server exiting")
        if mv is None:
            mv = self.models.resolve(request.model_name, request.model_version)
        if not mv.decoupled:
            yield await self.infer(request, mv)
            return
        _, sig, scheduler = _serving(mv)
        sig.validate(request)
        stream = ResponseStream(asyncio.get_running_loop(), sig, request)
        request.stream = stream
        with self._counted():
            task = asyncio.ensure_future(scheduler.infer(request))
            task.add_done_callback(lambda t: _end_stream(t, stream))
            try:
                while True:
                    response, final, error = await stream.get()
                    if error is not None:
                        raise error
                    if response is None:
                        response = InferResponse(mv.name, mv.version, request.id)
                    response.model_version = mv.version
                    response.final = final
                    if response.outputs:
                        self._finish(request, response, sig, mv.labels)
                    yield response
                    if final:
                        return
            finally:
                if not stream.closed:
                    stream.cancel()
                if not task.done():
                    task.cancel()

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        """One inference in flight for :meth:`wait_idle` while the block runs."""
        self._begin()
        try:
            yield
        finally:
            self._end()

    def _begin(self) -> None:
        """One more inference in flight (:meth:`wait_idle` waits for it)."""
        if not self._inflight:
            self._idle.clear()
        self._inflight += 1

    def _end(self) -> None:
        """One inference fewer in flight."""
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    @property
    def inflight(self) -> int:
        """Inferences accepted and not yet answered, over every transport."""
        return self._inflight

    async def wait_idle(self, timeout: float) -> bool:
        """Wait (up to ``timeout`` s) until no inference is in flight; False if some still are."""
        try:
            await asyncio.wait_for(self._idle.wait(), max(timeout, 0.0))
        except asyncio.TimeoutError:
            return self._inflight == 0
        return True

    def _finish(
        self,
        request: InferRequest,
        response: InferResponse,
        sig: Signature,
        labels: dict[str, list[str]],
    ) -> None:
        """Select the requested outputs, apply classification, note datatypes."""
        outputs = response.outputs
        if request.outputs:
            chosen = {}
            for out in request.outputs:
                array = outputs[out.name]
                if out.class_count:
                    array = classify(
                        array,
                        out.class_count,
                        labels.get(out.name),
                        sig.max_batch_size > 0,
                        out.name,
                    )
                chosen[out.name] = array
            response.outputs = outputs = chosen
        datatypes = response.datatypes
        specs = sig.outputs
        for name, array in outputs.items():
            spec = specs.get(name)
            if spec is not None and array.dtype.kind != "O":
                datatypes[name] = spec.datatype
            else:
                datatypes[name] = numpy_to_protocol(array.dtype)

    # ---- statistics ----------------------------------------------------------------------------

    def statistics(self, name: str = "", version: int = -1) -> dict:
        stats = []
        if not name:
            for model in self.models.names():
                for v, mv in sorted(self.models.versions(model).items()):
                    if mv.state is ModelState.READY:
                        stats.append(mv.stats.as_json(model, v))
            return {"model_stats": stats}
        versions = self.models.versions(name)
        if version >= 0:
            chosen = versions.get(version)
            if chosen is None or chosen.state is not ModelState.READY:
                raise InvalidArgument(
                    f"requested model version is not available for model '{name}'"
                )
            return {"model_stats": [chosen.stats.as_json(name, version)]}
        ready = [mv for mv in versions.values() if mv.state is ModelState.READY]
        if not ready:
            raise InvalidArgument(f"requested model '{name}' is not available")
        return {
            "model_stats": [
                mv.stats.as_json(name, mv.version) for mv in sorted(ready, key=lambda m: m.version)
            ]
        }

    # ---- shared memory and trace settings -------------------------------------------------------

    def check_client_shm(self) -> None:
        """``--allow-client-shm=false``: registering and unregistering regions is refused."""
        if not self.options.allow_client_shm:
            raise Unsupported(
                "Client shared memory is disabled. Start the server with "
                "'--allow-client-shm=true' to enable."
            )

    def shm_register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.check_client_shm()
        self.shm.register(name, key, offset, byte_size)

    def shm_unregister(self, name: str = "") -> None:
        self.check_client_shm()
        self.shm.unregister(name)

    def cuda_shm_status(self, name: str = "") -> list[dict]:
        """CUDA shared memory as a GPU-less Triton answers: nothing is ever registered."""
        if not name:
            return []
        # region names are one namespace: a registered system region is not a CUDA one
        if any(r.name == name for r in self.shm.regions()):
            raise NotFound(
                f"The region named '{name}' is registered as system shared memory, not CUDA "
                "shared memory"
            )
        raise NotFound(f"Unable to find cuda shared memory region: '{name}'")

    def cuda_shm_register(self, name: str) -> None:
        self.check_client_shm()
        raise InvalidArgument(
            f"failed to register CUDA shared memory region: '{name}', GPUs not supported"
        )

    def cuda_shm_unregister(self, name: str = "") -> None:
        """Nothing is ever registered, so there is nothing to do (tritonclient's examples and
        perf_analyzer call unregister-all before they start)."""
        self.check_client_shm()

    def trace_setting(self, model: str = "", changes: dict | None = None) -> dict:
        """The trace settings of ``model`` (or the global ones), after applying ``changes``."""
        if model and not self.model_ready(model):
            raise InvalidArgument(f"Request for unknown model : {model}")
        if changes is not None:
            return self.trace.update(changes, model)
        return self.trace.get(model)

    # ---- model repository ----------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        return self.models.index(ready_only)

    def _check_explicit(self) -> None:
        if self.options.control_mode is not ControlMode.EXPLICIT:
            raise Unavailable(
                "explicit model load / unload is not allowed if polling is enabled"
                if self.options.control_mode is ControlMode.POLL
                else "explicit model load / unload is not allowed if model control mode is NONE"
            )

    async def load_model(
        self,
        name: str,
        config_json: str | dict | None = None,
        files: dict[str, bytes] | None = None,
    ) -> None:
        """Load (or reload) ``name``; ``config_json`` overrides its config.pbtxt.

        ``files`` (path -> raw bytes) is a model folder sent with the request
        (:mod:`naiad.overrides`).
        """
        self._check_explicit()
        try:
            override = model_config_from_json(config_json) if config_json is not None else None
            await self.models.load(name, override, files=files)
        except NaiadError as exc:
            raise _load_failed(name, exc) from exc

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        self._check_explicit()
        await self.models.unload(name, unload_dependents=unload_dependents)


def _serving(mv: ModelVersion) -> tuple[ModelConfig, Signature, Scheduler]:
    """The config, signature and scheduler of a version :meth:`ModelManager.resolve` gave out
    (a ready one: all three are set)."""
    config, sig, scheduler = mv.config, mv.signature, mv.scheduler
    if config is None or sig is None or scheduler is None:
        raise Unavailable(f"model '{mv.name}' version {mv.version} is not ready")
    return config, sig, scheduler


def _end_stream(task: asyncio.Future, stream: ResponseStream) -> None:
    """A decoupled request's execution ended: an error it raised ends its stream, and an answer
    it returned instead of sending (a backend that knows no streams) is its final response."""
    if task.cancelled():
        return
    error = task.exception()
    if error is None:
        response = task.result()
        if response is not None and response.final and not stream.closed:
            try:
                stream.send(response, final=True)
            except StreamClosed:  # the backend sent its final response meanwhile
                pass
        return
    if not isinstance(error, NaiadError):
        error = InternalError(f"{type(error).__name__}: {error}")
    stream.fail(error)


def _load_failed(name: str, exc: NaiadError) -> NaiadError:
    """A load error worded as Triton's: ``failed to load '{m}', <why>`` (same status)."""
    message = exc.message
    if "failed to load" in message:
        return exc
    prefix = f"load failed for model '{name}': "
    if message.startswith(prefix):
        message = message[len(prefix) :]
    return type(exc)(f"failed to load '{name}', {message}")


def top_classes(array: np.ndarray, k: int, batched: bool, name: str) -> list[list[tuple[int, Any]]]:
    """The top-``k`` ``(index, value)`` pairs of each batch item, highest value first.

    Shared by the V2 classification extension (:func:`classify`) and the legacy v1 API.
    """
    if array.dtype.kind not in "iuf" or array.dtype == np.float16:
        raise InvalidArgument(
            f"class result not available for output due to unsupported type '{array.dtype}' "
            f"of output '{name}'"
        )
    rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
    k = min(k, rows.shape[1])
    return [[(int(idx), row[idx]) for idx in np.argsort(-row, kind="stable")[:k]] for row in rows]


def classify(
    array: np.ndarray, k: int, labels: list[str] | None, batched: bool, name: str
) -> np.ndarray:
    """Triton's classification extension: top-k ``"value:index[:label]"`` strings per item."""
    tops = top_classes(array, k, batched, name)
    k = len(tops[0]) if tops else 0
    out = np.empty((len(tops), k), dtype=np.object_)
    for r, top in enumerate(tops):
        for j, (idx, value) in enumerate(top):
            text = f"{value:f}" if array.dtype.kind == "f" else str(int(value))
            text = f"{text}:{idx}"
            if labels is not None and idx < len(labels):
                text = f"{text}:{labels[idx]}"
            out[r, j] = text.encode()
    return out if batched else out.reshape(k)
