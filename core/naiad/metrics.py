"""Prometheus metrics with Triton's names: a view over :mod:`naiad.stats`, built at scrape time.

Nothing here runs on the request path. :class:`InferenceCollector` walks the model manager's
:class:`~naiad.stats.ModelStats` when Prometheus scrapes, so ``/metrics`` and
``/v2/models/{m}/stats`` agree by construction. CPU and GPU gauges come from
:class:`~naiad.sysmetrics.SystemSampler`, which polls off the event loop.

The registry is made by :func:`build_registry` for each server (no import-time global), and is
written out by :func:`render`: Prometheus's text format 0.0.4 as Triton writes it, i.e. counters
keep their own names (``nv_inference_count``, not ``prometheus_client``'s ``..._total``).
Transport-free: the HTTP side is :mod:`naiad.http.metrics`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from .stats import ModelStats
from .sysmetrics import SystemSampler

if TYPE_CHECKING:
    from .models import ModelManager

#: what ``GET /metrics`` answers with (the format Triton's prometheus-cpp writes)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Triton's values of the ``reason`` label of ``nv_inference_request_failure``
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


@dataclass(frozen=True)
class MetricsConfig:
    """The metrics flags (Triton's ``--allow-metrics``, ``--metrics-port``, ...)."""

    allow_metrics: bool = True
    allow_gpu_metrics: bool = True
    allow_cpu_metrics: bool = True
    port: int = 8002
    #: address to bind; ``None`` means the same as ``--http-address``
    address: str | None = None
    interval_ms: int = 2000
    #: ``--metrics-config counter_latencies=...``: export the ``*_duration_us`` counters
    counter_latencies: bool = True


def apply_metrics_config(config: MetricsConfig, items: Iterable[str]) -> MetricsConfig:
    """Apply ``--metrics-config key=value`` options; raises :class:`ValueError` on bad ones.

    ``counter_latencies`` is honoured. Triton's opt-in latency summaries and histograms
    (``summary_latencies``, ``histogram_latencies``) are not offered: asking for them is an
    error, turning them off is accepted.
    """
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip().lower()
        if not sep or not key:
            raise ValueError(f"--metrics-config expects <key>=<value>, got '{item}'")
        if key == "counter_latencies":
            config = replace(config, counter_latencies=_config_bool(key, value))
        elif key in ("summary_latencies", "histogram_latencies"):
            if _config_bool(key, value):
                raise ValueError(f"--metrics-config {key}=true is not supported by naiad")
        elif key == "summary_quantiles":
            pass  # only meaningful with summary latencies, which are off
        else:
            raise ValueError(f"unknown --metrics-config key '{key}'")
    return config


def _config_bool(key: str, value: str) -> bool:
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise ValueError(f"--metrics-config {key} expects true or false, got '{value}'")


# ---- inference metrics ---------------------------------------------------------------------

_Getter = Callable[[ModelStats], int]

#: (name, help, value) of the per-model counters other than failures and durations
_COUNTS: tuple[tuple[str, str, _Getter], ...] = (
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    (
        "nv_inference_count",
        "Number of inferences performed (does not include cached requests)",
        lambda s: s.inference_count,
    ),
    (
        "nv_inference_exec_count",
        "Number of model executions performed (does not include cached requests)",
        lambda s: s.execution_count,
    ),
)

#: the cumulative ``*_duration_us`` counters (``--metrics-config counter_latencies``)
_DURATIONS: tuple[tuple[str, str, _Getter], ...] = (
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds (includes cached requests)",
        lambda s: s.success.ns // 1000,
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
        lambda s: s.queue.ns // 1000,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds (does not include cached requests)",
        lambda s: s.compute_input.ns // 1000,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
        lambda s: s.compute_infer.ns // 1000,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds (does not include cached "
        "requests)",
        lambda s: s.compute_output.ns // 1000,
    ),
)


def _family(name: str, documentation: str, typ: str) -> Metric:
    return Metric(name, documentation, typ)


class InferenceCollector:
    """Per model-version counters with Triton's names and labels, read from ModelStats.

    Labels: ``model``, ``version`` and ``_<key>`` for each config ``metric_tags`` entry. A
    version has series while it is loaded (READY, or UNLOADING while it drains).
    """

    def __init__(self, models: ModelManager, *, counter_latencies: bool = True) -> None:
        self.models = models
        self.counter_latencies = counter_latencies

    def describe(self) -> list[Metric]:
        """Nothing to check at registration (names are fixed), and no collect() then."""
        return []

    def _rows(self) -> list[tuple[dict[str, str], ModelStats]]:
        from .models import ModelState

        live = (ModelState.READY, ModelState.UNLOADING)
        rows = []
        for name in self.models.names():
            # copies (atomic under the GIL): the loop thread may change these meanwhile
            for mv in sorted(list(self.models.versions(name).values()), key=lambda m: m.version):
                if mv.state not in live:
                    continue
                labels = {"model": name, "version": str(mv.version)}
                if mv.config is not None:
                    for key, value in sorted(dict(mv.config.metric_tags).items()):
                        labels[f"_{key}"] = value
                rows.append((labels, mv.stats))
        return rows

    def collect(self) -> Iterator[Metric]:
        rows = self._rows()
        specs = _COUNTS + (_DURATIONS if self.counter_latencies else ())
        first, rest = specs[:1], specs[1:]
        yield from self._counters(first, rows)
        failure = _family(
            "nv_inference_request_failure",
            "Number of failed inference requests, all batch sizes",
            "counter",
        )
        for labels, stats in rows:
            by_reason = dict.fromkeys(FAILURE_REASONS, 0)
            for reason, count in dict(stats.fail_reasons).items():
                key = reason if reason in by_reason else "OTHER"
                by_reason[key] += count
            for reason, count in by_reason.items():
                failure.add_sample(failure.name, {**labels, "reason": reason}, count)
        yield failure
        yield from self._counters(rest, rows)
        pending = _family(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
            "gauge",
        )
        for labels, stats in rows:
            pending.add_sample(pending.name, labels, stats.pending)
        yield pending

    @staticmethod
    def _counters(
        specs: Iterable[tuple[str, str, _Getter]], rows: list[tuple[dict[str, str], ModelStats]]
    ) -> Iterator[Metric]:
        for name, documentation, getter in specs:
            family = _family(name, documentation, "counter")
            for labels, stats in rows:
                family.add_sample(name, labels, getter(stats))
            yield family


# ---- registry and exposition ---------------------------------------------------------------


def build_registry(
    models: ModelManager,
    config: MetricsConfig,
    sampler: SystemSampler | None = None,
    extra: Iterable[object] = (),
) -> CollectorRegistry:
    """A fresh registry for one server: inference metrics, the sampler's CPU/GPU gauges, and
    ``extra`` collectors (the custom metrics models define)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InferenceCollector(models, counter_latencies=config.counter_latencies))
    if sampler is not None:
        registry.register(sampler)
    for collector in extra:
        registry.register(collector)  # type: ignore[arg-type]
    return registry


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(text: str) -> str:
    if "\\" not in text and "\n" not in text and '"' not in text:
        return text
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())


def _value(v: float) -> str:
    if isinstance(v, int) or (math.isfinite(v) and v.is_integer() and abs(v) < 2**53):
        return str(int(v))
    return floatToGoString(v)


_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}


def render(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus's text format 0.0.4, counters under their own names.

    ``prometheus_client.generate_latest`` would declare ``# TYPE nv_inference_count_total
    counter`` above samples named ``nv_inference_count``; Triton (and so its dashboards and
    parsers) has ``# TYPE nv_inference_count counter``. Metrics made with prometheus_client's own
    ``Counter`` (samples ``x_total``) keep the ``_total`` name; their ``_created`` samples are
    left out.
    """
    out: list[str] = []
    # one label set is shared by a model's samples in every family: format it once per scrape
    # (the cache holds the dict itself, so its id cannot be reused meanwhile)
    formatted: dict[int, tuple[dict[str, str], str]] = {}
    for metric in registry.collect():
        name, typ = metric.name, metric.type
        samples: list[Sample] = list(metric.samples)
        if typ == "counter" and any(s.name == f"{name}_total" for s in samples):
            name = f"{name}_total"
            samples = [s for s in samples if not s.name.endswith("_created")]
        elif typ == "info":
            name = f"{name}_info"
        out.append(f"# HELP {name} {_escape_help(metric.documentation)}")
        out.append(f"# TYPE {name} {_TYPES.get(typ, typ)}")
        for s in samples:
            hit = formatted.get(id(s.labels))
            if hit is not None and hit[0] is s.labels:
                labels = hit[1]
            else:
                labels = _labels(s.labels)
                formatted[id(s.labels)] = (s.labels, labels)
            line = f"{s.name}{{{labels}}}" if labels else s.name
            line += f" {_value(s.value)}"
            if s.timestamp is not None:
                line += f" {int(float(s.timestamp) * 1000)}"
            out.append(line)
    out.append("")
    return "\n".join(out).encode()


class Metrics:
    """One server's metrics: the registry and the sampler behind it, with paired start/stop."""

    def __init__(
        self, models: ModelManager, config: MetricsConfig, extra: Iterable[object] = ()
    ) -> None:
        self.config = config
        self.sampler = SystemSampler(
            config.interval_ms / 1000.0,
            cpu=config.allow_cpu_metrics,
            gpu=config.allow_gpu_metrics,
        )
        self.registry = build_registry(models, config, self.sampler, extra)

    async def start(self) -> None:
        """Open the CPU/GPU readers (off the loop) and start polling them."""
        await self.sampler.start()

    async def stop(self) -> None:
        await self.sampler.stop()

    async def render(self) -> bytes:
        """The exposition text, built on a worker thread so a big registry never stalls the loop."""
        return await asyncio.to_thread(render, self.registry)
