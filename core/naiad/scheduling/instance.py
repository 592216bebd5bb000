"""One model instance: a backend object and the single worker thread that runs it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import CustomInstance, InferenceBackend
from ..errors import InternalError, NaiadError
from ..inference import InferRequest, InferResponse
from ..signature import Signature
from .custom_outputs import check_custom_outputs
from .worker import Worker

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BatchResult:
    """What one execution produced, with its timings (monotonic ns)."""

    responses: Sequence[InferResponse | BaseException]
    start_ns: int
    input_ns: int
    infer_ns: int
    output_ns: int


class Instance:
    """Runs batches of requests on one backend object, always on the same thread.

    The thread is the instance's own, so a backend never sees two calls at once and
    thread-affine frameworks (CUDA contexts, TF sessions) stay on one thread.
    """

    def __init__(self, backend: InferenceBackend, signature: Signature) -> None:
        self.backend = backend
        self.signature = signature
        self.name = backend.instance.name
        #: the instance's own thread: load, every execution and unload run there
        self.executor = Worker(f"naiad-{self.name}")
        self._custom = isinstance(backend, CustomInstance)
        #: the readiness check in flight (an asyncio future, loop only; ``naiad.readiness``)
        self.ready_check: Any = None
        #: inputs the backend sees in another shape, and the outputs it makes by default
        self._reshapes = {n: t.reshape for n, t in signature.inputs.items() if t.reshape}
        self._outputs = list(signature.outputs)
        #: output name -> (spec, its numpy dtype), looked up once per output of an execution
        self._out_specs = {n: (t, t.numpy_dtype) for n, t in signature.outputs.items()}
        #: the backend's way to start an execution from the event loop, if it has one
        self._submit = getattr(backend, "submit_requests", None) if self._custom else None
        #: :meth:`submit` may start executions from the loop (else it always returns False)
        self.submits = self._submit is not None

    def submit(
        self,
        requests: Sequence[InferRequest],
        done: Callable[[BatchResult | None, BaseException | None], None],
    ) -> bool:
        """On the loop: start executing ``requests`` without the instance thread, where the
        backend can (a process-isolated instance: the loop writes the execution to its process
        and reads the answer). ``done(result, error)`` then runs on the loop with what
        :meth:`run` would have returned. False: nothing started; run it on the thread. The
        backend's ``submit_requests(requests, done)`` answers with responses whose outputs it
        already checked as :meth:`run` checks them (the process does it, off the loop)."""
        submit = self._submit
        if submit is None:
            return False
        start = time.monotonic_ns()

        def finished(responses: list[Any] | None, error: BaseException | None) -> None:
            if responses is not None and len(responses) == len(requests):
                # checked where they were made (``submit_requests``' contract)
                end = time.monotonic_ns()
                out = [self._as_error(r) if isinstance(r, BaseException) else r for r in responses]
                done(BatchResult(out, start, 0, end - start, 0), None)
                return
            outcome = [error] * len(requests) if responses is None else responses
            done(self._custom_result(requests, outcome, start), None)

        return submit(requests, finished)

    def run(
        self, requests: Sequence[InferRequest], extra_outputs: Sequence[str] = ()
    ) -> BatchResult:
        """Execute ``requests`` as one batch. Runs on the instance thread.

        ``extra_outputs`` are model outputs outside the signature that every execution must
        produce (implicit state); they come back in each response's outputs, unconverted, for
        the scheduler to take out.
        """
        start = time.monotonic_ns()
        if self._custom:
            return self._run_custom(requests, start, extra_outputs)
        try:
            inputs, wanted = self._gather(requests, extra_outputs)
            t_input = time.monotonic_ns()
            produced = self.backend.execute(inputs, wanted)
            t_infer = time.monotonic_ns()
            responses = self._scatter(requests, produced, wanted)
        except BaseException as exc:  # SystemExit from a backend too: it fails this batch only
            error = self._as_error(exc)
            now = time.monotonic_ns()
            return BatchResult([error] * len(requests), start, 0, now - start, 0)
        end = time.monotonic_ns()
        return BatchResult(responses, start, t_input - start, t_infer - t_input, end - t_infer)

    def _run_custom(
        self, requests: Sequence[InferRequest], start: int, extra_outputs: Sequence[str] = ()
    ) -> BatchResult:
        """A :class:`CustomInstance` sees the requests themselves; its outputs are checked
        (``extra_outputs`` pass through unconverted, as in :meth:`run`)."""
        try:
            responses = list(self.backend.execute_requests(requests))  # type: ignore[attr-defined]
        except BaseException as exc:
            responses = [exc] * len(requests)
        return self._custom_result(requests, responses, start, extra_outputs)

    def _custom_result(
        self,
        requests: Sequence[InferRequest],
        responses: Sequence[Any],
        start: int,
        extra_outputs: Sequence[str] = (),
    ) -> BatchResult:
        """What a custom backend answered, checked (wherever it ran)."""
        if len(responses) != len(requests):
            error = InternalError(
                f"custom backend of model '{self.signature.model_name}' returned "
                f"{len(responses)} responses for {len(requests)} requests"
            )
            responses = [error] * len(requests)
        t_infer = time.monotonic_ns()
        checked: list[InferResponse | Exception] = []
        for request, response in zip(requests, responses, strict=True):
            if isinstance(response, BaseException):
                checked.append(self._as_error(response))
                continue
            if response is None:  # answered through its stream (a decoupled model)
                checked.append(self._streamed(request))
                continue
            try:
                response.outputs = check_custom_outputs(
                    self.signature, request, response.outputs, extra_outputs
                )
            except NaiadError as exc:
                checked.append(exc)
                continue
            checked.append(response)
        end = time.monotonic_ns()
        return BatchResult(checked, start, 0, t_infer - start, end - t_infer)

    def _streamed(self, request: InferRequest) -> InferResponse | Exception:
        """The placeholder for a request answered through ``request.stream``."""
        if request.stream is None:
            return InternalError(
                f"custom backend of model '{self.signature.model_name}' returned no response "
                "for a request"
            )
        return InferResponse(request.model_name, request.model_version, request.id, final=False)

    def _as_error(self, exc: BaseException) -> NaiadError:
        """A backend's exception as a NaiadError that names the model and the instance."""
        if isinstance(exc, NaiadError):
            return exc
        return InternalError(
            f"{type(exc).__name__} in model '{self.signature.model_name}' instance "
            f"'{self.name}': {exc}"
        )

    def _gather(
        self, requests: Sequence[InferRequest], extra_outputs: Sequence[str] = ()
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        sig = self.signature
        batching = sig.max_batch_size > 0
        if len(requests) == 1:
            inputs = dict(requests[0].inputs)
        else:
            inputs = {
                name: np.concatenate([r.inputs[name] for r in requests], axis=0)
                for name in requests[0].inputs
            }
        # control and state inputs are not in the signature: never reshaped
        for name, reshape in self._reshapes.items():
            array = inputs.get(name)
            if array is not None:
                lead = (array.shape[0],) if batching else ()
                inputs[name] = array.reshape(lead + reshape)
        wanted: list[str]
        if len(requests) == 1:
            outputs = requests[0].outputs
            wanted = [o.name for o in outputs] if outputs else list(self._outputs)
        else:
            wanted = []
            for r in requests:
                names = [o.name for o in r.outputs] if r.outputs else self._outputs
                for n in names:
                    if n not in wanted:
                        wanted.append(n)
        if extra_outputs:
            wanted.extend(n for n in extra_outputs if n not in wanted)
        return inputs, wanted

    def _scatter(
        self, requests: Sequence[InferRequest], produced, wanted: list[str]
    ) -> list[InferResponse | Exception]:
        sig = self.signature
        batching = sig.max_batch_size > 0
        outputs: dict[str, np.ndarray] = {}
        specs = self._out_specs
        for name in wanted:
            if name not in produced:
                raise InternalError(
                    f"model '{sig.model_name}' did not produce requested output '{name}'"
                )
            array = produced[name]
            if type(array) is not np.ndarray:
                array = np.asarray(array)
            found = specs.get(name)
            if found is None:  # an extra output (implicit state): the scheduler takes it
                outputs[name] = array
                continue
            spec, dtype = found
            if array.dtype != dtype:
                if spec.datatype == "BYTES":
                    array = array.astype(np.object_)
                else:
                    array = array.astype(dtype)
            if spec.reshape is not None:
                target = ((array.shape[0],) if batching else ()) + spec.dims
                if target.count(-1) <= 1:
                    array = array.reshape(target)
            outputs[name] = array
        if len(requests) == 1:
            r = requests[0]
            return [InferResponse(r.model_name, r.model_version, r.id, outputs)]
        responses: list[InferResponse | Exception] = []
        offset = 0
        for r in requests:
            end = offset + r.batch_size
            # slices are views: splitting a batch copies nothing
            mine = {n: a[offset:end] for n, a in outputs.items()}
            responses.append(InferResponse(r.model_name, r.model_version, r.id, mine))
            offset = end
        return responses

    def load(self) -> None:
        self.backend.load()

    def unload(self) -> None:
        """Release the backend (on the caller's thread), then stop the worker thread."""
        try:
            self.backend.unload()
        finally:
            self.executor.shutdown(wait=False)

    def release(self) -> None:
        """Thread-side (a load thread, never the loop): :meth:`unload` on the instance's own
        thread, waiting for it; an error there is logged, never raised over the caller's."""
        try:
            self.executor.submit(self.unload).result()
        except Exception:
            log.exception(
                "unloading instance '%s' of model '%s' failed", self.name, self.signature.model_name
            )
