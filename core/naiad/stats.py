"""Per model-version counters: the one source of truth for the statistics extension and metrics.

Updated only from the event loop thread, so no locks. Times are nanoseconds from the monotonic
clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import InternalError, NaiadError

if TYPE_CHECKING:
    from .inference import InferResponse
    from .scheduling.instance import BatchResult


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    #: ms since the epoch of the last successful request, 0 if none
    last_inference: int = 0
    batch: dict[int, BatchStats] = field(default_factory=dict)
    #: failures by reason ("REJECTED", "BACKEND", "CANCELED", "OTHER"), for metrics
    fail_reasons: dict[str, int] = field(default_factory=dict)
    pending: int = 0

    def record_execution(
        self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One backend execution over ``batch_size`` batch items."""
        self.execution_count += 1
        stats = self.batch.get(batch_size)
        if stats is None:
            stats = self.batch[batch_size] = BatchStats()
        # Duration.add, written out here and in record_success: they run for every request
        d = stats.compute_input
        d.count += 1
        d.ns += input_ns
        d = stats.compute_infer
        d.count += 1
        d.ns += infer_ns
        d = stats.compute_output
        d.count += 1
        d.ns += output_ns

    def record_success(
        self, total_ns: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int, items: int
    ) -> None:
        """One request that succeeded; compute times are its share of its batch."""
        d = self.success
        d.count += 1
        d.ns += total_ns
        d = self.queue
        d.count += 1
        d.ns += queue_ns
        d = self.compute_input
        d.count += 1
        d.ns += input_ns
        d = self.compute_infer
        d.count += 1
        d.ns += infer_ns
        d = self.compute_output
        d.count += 1
        d.ns += output_ns
        self.inference_count += items
        self.last_inference = time.time_ns() // 1_000_000

    def _backend_failure(self, error: BaseException, total_ns: int) -> NaiadError:
        """A request its backend failed: counted, and returned as a NaiadError (anything else
        wrapped as an internal error)."""
        self.record_failure(total_ns, "BACKEND")
        return error if isinstance(error, NaiadError) else InternalError(str(error))

    def record_outcome(
        self,
        outcome: InferResponse | BaseException,
        arrived_ns: int,
        end_ns: int,
        result: BatchResult,
        share: int,
        items: int,
    ) -> InferResponse | NaiadError:
        """Count one request of an execution: a success with its ``1/share`` of the batch's
        compute times, or a BACKEND failure. Returns what the caller gets: the response, or the
        error as a NaiadError (anything else is wrapped as an internal error)."""
        if isinstance(outcome, BaseException):
            return self._backend_failure(outcome, end_ns - arrived_ns)
        self.record_success(
            end_ns - arrived_ns,
            result.start_ns - arrived_ns,
            result.input_ns // share,
            result.infer_ns // share,
            result.output_ns // share,
            items,
        )
        return outcome

    def record_alone(
        self,
        outcome: InferResponse | BaseException,
        arrived_ns: int,
        end_ns: int,
        result: BatchResult,
        items: int,
    ) -> InferResponse | NaiadError:
        """:meth:`record_execution` (on success) and :meth:`record_outcome` of a request that
        ran alone (``items`` batch items): what the default scheduler records for every
        request, in one call."""
        if isinstance(outcome, BaseException):
            return self._backend_failure(outcome, end_ns - arrived_ns)
        input_ns, infer_ns, output_ns = result.input_ns, result.infer_ns, result.output_ns
        self.record_execution(items, input_ns, infer_ns, output_ns)
        self.record_success(
            end_ns - arrived_ns, result.start_ns - arrived_ns, input_ns, infer_ns, output_ns, items
        )
        return outcome

    def record_failure(self, total_ns: int, reason: str = "OTHER") -> None:
        self.fail.add(total_ns)
        self.fail_reasons[reason] = self.fail_reasons.get(reason, 0) + 1

    def as_json(self, name: str, version: int) -> dict:
        return {
            "name": name,
            "version": str(version),
            "last_inference": self.last_inference,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_json(),
                "fail": self.fail.as_json(),
                "queue": self.queue.as_json(),
                "compute_input": self.compute_input.as_json(),
                "compute_infer": self.compute_infer.as_json(),
                "compute_output": self.compute_output.as_json(),
                "cache_hit": self.cache_hit.as_json(),
                "cache_miss": self.cache_miss.as_json(),
            },
            "response_stats": {},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.as_json(),
                    "compute_infer": b.compute_infer.as_json(),
                    "compute_output": b.compute_output.as_json(),
                }
                for size, b in sorted(self.batch.items())
            ],
            "memory_usage": [],
        }
