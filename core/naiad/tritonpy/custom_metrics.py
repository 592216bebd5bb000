"""``pb_utils.MetricFamily`` / ``Metric``: custom counters, gauges and histograms a model
defines, served on the metrics port beside ``nv_*`` (``python-backend.md`` §7.7).

:class:`MetricRegistry` holds the values (in the server process) and is a Prometheus collector
of :mod:`naiad.metrics`' registry. Model code talks to it through the current host, by ids, so
the same calls work from an instance's own process.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import Metric as PromMetric

from ..errors import InvalidArgument

COUNTER, GAUGE, HISTOGRAM = 0, 1, 2
_KIND_NAMES = {
    COUNTER: "TRITONSERVER_METRIC_KIND_COUNTER",
    GAUGE: "TRITONSERVER_METRIC_KIND_GAUGE",
    HISTOGRAM: "TRITONSERVER_METRIC_KIND_HISTOGRAM",
}
_PROM_TYPES = {COUNTER: "counter", GAUGE: "gauge", HISTOGRAM: "histogram"}


class _Series:
    __slots__ = ("labels", "value", "buckets", "counts", "total", "count")

    def __init__(self, labels: dict[str, str], buckets: list[float] | None) -> None:
        self.labels = labels
        self.value = 0.0
        self.buckets = sorted(buckets) if buckets else []
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.count = 0


class MetricRegistry:
    """Every custom family and series of one server. Thread-safe; ids are small integers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[int, tuple[str, str, int]] = {}
        self._by_name: dict[str, int] = {}
        self._series: dict[int, tuple[int, _Series]] = {}
        self._next = 1

    def family(self, name: str, description: str, kind: int) -> int:
        if kind not in _KIND_NAMES:
            raise InvalidArgument("Failed to create metric family: unknown kind")
        if not name:
            raise InvalidArgument("Failed to create metric family: name cannot be empty")
        with self._lock:
            fid = self._by_name.get(name)
            if fid is not None:
                if self._families[fid][2] != kind:
                    raise InvalidArgument(
                        f"Failed to create metric family: a family named '{name}' of another "
                        "kind exists"
                    )
                return fid
            fid = self._next
            self._next += 1
            self._families[fid] = (name, description, kind)
            self._by_name[name] = fid
            return fid

    def metric(self, fid: int, labels: dict[str, str], buckets: list[float] | None) -> int:
        with self._lock:
            kind = self._families[fid][2]
            for sid, (f, s) in self._series.items():
                if f == fid and s.labels == labels:
                    return sid
            sid = self._next
            self._next += 1
            self._series[sid] = (fid, _Series(dict(labels), buckets if kind == HISTOGRAM else None))
            return sid

    def drop_metric(self, sid: int) -> None:
        with self._lock:
            self._series.pop(sid, None)

    def apply(self, sid: int, op: str, value: float = 0.0) -> float | None:
        with self._lock:
            found = self._series.get(sid)
            if found is None:
                raise InvalidArgument("the metric was deleted")
            fid, s = found
            kind = self._families[fid][2]
            what = _KIND_NAMES[kind]
            if op == "increment":
                if kind == HISTOGRAM:
                    raise InvalidArgument(
                        f"Failed to increment metric value: {what} does not support Increment"
                    )
                if kind == COUNTER and value < 0:
                    raise InvalidArgument(
                        "Failed to increment metric value: TRITONSERVER_METRIC_KIND_COUNTER can "
                        "only be incremented monotonically by non-negative values."
                    )
                s.value += value
            elif op == "set":
                if kind != GAUGE:
                    raise InvalidArgument(
                        f"Failed to set metric value: {what} does not support Set"
                    )
                s.value = value
            elif op == "observe":
                if kind != HISTOGRAM:
                    raise InvalidArgument(
                        f"Failed to observe metric value: {what} does not support Observe"
                    )
                s.counts[bisect.bisect_left(s.buckets, value)] += 1
                s.total += value
                s.count += 1
            elif op == "value":
                if kind == HISTOGRAM:
                    raise InvalidArgument(
                        f"Failed to get metric value: {what} does not support Value"
                    )
                return s.value
            return None

    # ---- Prometheus collector ------------------------------------------------------------------

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[PromMetric]:
        with self._lock:
            families = dict(self._families)
            series = [
                (f, s.labels, s.value, list(s.buckets), list(s.counts), s.total, s.count)
                for f, s in self._series.values()
            ]
        for fid, (name, description, kind) in sorted(families.items()):
            family = PromMetric(name, description, _PROM_TYPES[kind])
            for f, labels, value, buckets, counts, total, count in series:
                if f != fid:
                    continue
                if kind != HISTOGRAM:
                    family.add_sample(name, labels, value)
                    continue
                running = 0
                for bound, n in zip([*buckets, float("inf")], counts, strict=True):
                    running += n
                    le = "+Inf" if bound == float("inf") else _bound(bound)
                    family.add_sample(f"{name}_bucket", {**labels, "le": le}, running)
                family.add_sample(f"{name}_sum", labels, total)
                family.add_sample(f"{name}_count", labels, count)
            yield family


def _bound(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


# ---- the pb_utils classes --------------------------------------------------------------------


class MetricKind:
    COUNTER = COUNTER
    GAUGE = GAUGE
    HISTOGRAM = HISTOGRAM


def _host() -> Any:
    from .host import current

    return current()


def _raise(exc: Exception) -> None:
    from .objects import TritonModelException

    raise TritonModelException(str(exc)) from exc


class Metric:
    def __init__(self, family: MetricFamily, labels: Any = None, buckets: Any = None) -> None:
        if labels is None:
            labels = {}
        if not isinstance(labels, dict):
            _raise(ValueError("Failed to create metric. Labels must be a dictionary."))
        if family._kind == HISTOGRAM:
            if buckets is None:
                _raise(ValueError("Failed to create metric. Missing required buckets."))
            if not isinstance(buckets, list):
                _raise(ValueError("Failed to create metric. Buckets must be a list."))
        elif buckets is not None:
            _raise(ValueError("Failed to create metric. Unexpected buckets found."))
        self._registry = family._registry
        labels = {str(k): str(v) for k, v in labels.items()}
        self._id = self._registry.metric(family._id, labels, buckets)

    def _apply(self, op: str, value: float = 0.0) -> float | None:
        try:
            return self._registry.apply(self._id, op, float(value))
        except InvalidArgument as exc:
            _raise(exc)
            return None

    def increment(self, value: float) -> None:
        self._apply("increment", value)

    def set(self, value: float) -> None:
        self._apply("set", value)

    def observe(self, value: float) -> None:
        self._apply("observe", value)

    def value(self) -> float:
        return float(self._apply("value") or 0.0)


class MetricFamily:
    COUNTER = COUNTER
    GAUGE = GAUGE
    HISTOGRAM = HISTOGRAM

    def __init__(self, name: str, description: str, kind: int) -> None:
        self._registry = _host().metrics
        self._kind = int(kind)
        try:
            self._id = self._registry.family(name, description, self._kind)
        except InvalidArgument as exc:
            _raise(exc)

    def Metric(self, labels: Any = None, buckets: Any = None) -> Metric:
        return Metric(self, labels, buckets)
