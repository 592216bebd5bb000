"""Prometheus metrics: the real server's metrics port, scraped after real tritonclient traffic."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import free_port
from naiad.metrics import MetricsConfig, apply_metrics_config, render
from naiad.sysmetrics import parse_meminfo, parse_proc_stat
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from tritonclient.utils import InferenceServerException

INFERENCE_COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)
DURATIONS = INFERENCE_COUNTERS[4:]
GPU_FAMILIES = (
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
    "nv_gpu_power_limit",
    "nv_energy_consumption",
)


# ---- helpers --------------------------------------------------------------------------------


def scrape_text(srv) -> str:
    with urllib.request.urlopen(srv.metrics_url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return resp.read().decode()


def scrape(srv) -> dict:
    """family name -> Metric, parsed by prometheus_client's own parser."""
    return {f.name: f for f in text_string_to_metric_families(scrape_text(srv))}


def value(families: dict, name: str, **labels: str) -> float:
    """The one sample of family ``name`` whose labels include ``labels``."""
    found = [
        s.value
        for s in families[name].samples
        if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (name, labels, families[name].samples)
    return found[0]


def _one(value: float, batch: int = 1):
    inp = httpclient.InferInput("INPUT0", [batch, 1], "FP32")
    inp.set_data_from_numpy(np.full((batch, 1), value, dtype=np.float32))
    return [inp]


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def plugin_repo(tmp_path_factory):
    """``failing`` raises on negative input; ``sleepy`` sleeps max(INPUT0) ms."""
    repo = tmp_path_factory.mktemp("metrics_repo")
    for name, backend, tags in (
        ("sleepy", "test_sleep", ""),
        ("failing", "test_fail", 'metric_tags { key: "team" value: "search" }\n'),
    ):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(
            f'backend: "{backend}"\nmax_batch_size: 4\n'
            'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
            'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
            "instance_group [{ kind: KIND_CPU count: 1 }]\n" + tags
        )
    return repo


def _gpu_available() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return False
    try:
        return pynvml.nvmlDeviceGetCount() > 0
    finally:
        pynvml.nvmlShutdown()


# ---- inference metrics ----------------------------------------------------------------------


def test_exact_counts_reasons_and_agreement_with_statistics(server_factory, plugin_repo):
    srv = server_factory(plugin_repo, "--plugin", "naiad_test_backends")
    fam = scrape(srv)
    labels = {"model": "failing", "version": "1"}
    for name in INFERENCE_COUNTERS:
        assert fam[name].type == "counter", name
    assert fam["nv_inference_pending_request_count"].type == "gauge"
    # a loaded model has its series from the start, at zero, with all of Triton's reasons
    assert value(fam, "nv_inference_request_success", **labels) == 0
    for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
        assert value(fam, "nv_inference_request_failure", reason=reason, **labels) == 0

    c = httpclient.InferenceServerClient(srv.url)
    for _ in range(5):
        c.infer("failing", _one(1.0))
    c.infer("failing", _one(1.0, batch=3))  # one request, three inferences
    for _ in range(3):
        with pytest.raises(InferenceServerException):
            c.infer("failing", _one(-1.0))

    fam = scrape(srv)
    assert value(fam, "nv_inference_request_success", **labels) == 6
    assert value(fam, "nv_inference_request_failure", reason="BACKEND", **labels) == 3
    for reason in ("REJECTED", "CANCELED", "OTHER"):
        assert value(fam, "nv_inference_request_failure", reason=reason, **labels) == 0
    assert value(fam, "nv_inference_count", **labels) == 8
    assert value(fam, "nv_inference_exec_count", **labels) == 6
    assert value(fam, "nv_inference_pending_request_count", **labels) == 0
    assert value(fam, "nv_inference_request_duration_us", **labels) > 0
    # config metric_tags become `_<key>` labels, as in Triton
    assert value(fam, "nv_inference_count", _team="search", **labels) == 8
    # the other model's series are there too, untouched
    assert value(fam, "nv_inference_request_success", model="sleepy", version="1") == 0

    # one source of truth: /metrics and the statistics extension agree exactly
    stats = c.get_inference_statistics("failing")["model_stats"][0]
    inf = stats["inference_stats"]
    assert value(fam, "nv_inference_request_success", **labels) == inf["success"]["count"]
    assert (
        sum(
            s.value
            for s in fam["nv_inference_request_failure"].samples
            if s.labels["model"] == "failing"
        )
        == inf["fail"]["count"]
    )
    assert value(fam, "nv_inference_count", **labels) == stats["inference_count"]
    assert value(fam, "nv_inference_exec_count", **labels) == stats["execution_count"]
    for metric, key in (
        ("nv_inference_request_duration_us", "success"),
        ("nv_inference_queue_duration_us", "queue"),
        ("nv_inference_compute_input_duration_us", "compute_input"),
        ("nv_inference_compute_infer_duration_us", "compute_infer"),
        ("nv_inference_compute_output_duration_us", "compute_output"),
    ):
        assert value(fam, metric, **labels) == inf[key]["ns"] // 1000, metric
    c.close()


def test_durations_grow_with_work(server_factory, plugin_repo):
    srv = server_factory(plugin_repo, "--plugin", "naiad_test_backends")
    labels = {"model": "sleepy", "version": "1"}
    c = httpclient.InferenceServerClient(srv.url)
    c.infer("sleepy", _one(1.0))
    before = scrape(srv)
    for _ in range(3):
        c.infer("sleepy", _one(30.0))  # 30 ms of model execution each
    after = scrape(srv)
    grown = {n: value(after, n, **labels) - value(before, n, **labels) for n in DURATIONS}
    assert grown["nv_inference_compute_infer_duration_us"] >= 3 * 30_000
    assert (
        grown["nv_inference_request_duration_us"] >= grown["nv_inference_compute_infer_duration_us"]
    )
    for name in DURATIONS:
        assert grown[name] >= 0, name
    assert value(after, "nv_inference_request_success", **labels) == 4
    c.close()


def test_pending_counts_requests_waiting(server_factory, plugin_repo):
    """Two requests behind a slow one on a one-instance model are pending while it runs."""
    import concurrent.futures

    srv = server_factory(plugin_repo, "--plugin", "naiad_test_backends")
    labels = {"model": "sleepy", "version": "1"}
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(
                lambda: httpclient.InferenceServerClient(srv.url).infer("sleepy", _one(600.0))
            )
            for _ in range(3)
        ]
        deadline = time.monotonic() + 5
        seen = 0.0
        while time.monotonic() < deadline and seen < 2:
            seen = max(seen, value(scrape(srv), "nv_inference_pending_request_count", **labels))
            time.sleep(0.05)
        for f in futures:
            f.result()
    assert seen >= 2
    assert value(scrape(srv), "nv_inference_pending_request_count", **labels) == 0


def test_exposition_is_tritons_shape(server):
    text = scrape_text(server)
    # counters keep Triton's names (no prometheus_client `_total` suffix)
    assert "# TYPE nv_inference_request_success counter\n" in text
    assert "# TYPE nv_inference_pending_request_count gauge\n" in text
    assert 'nv_inference_count{model="simple",version="1"} ' in text
    assert not re.search(r"^(# TYPE )?nv_inference_\w+_total[{ ]", text, re.M)


def test_unloaded_model_has_no_series(server_factory, example_repo):
    srv = server_factory(
        example_repo,
        "--model-control-mode",
        "explicit",
        "--load-model",
        "simple",
        "--load-model",
        "mlp",
    )
    fam = scrape(srv)
    assert {s.labels["model"] for s in fam["nv_inference_count"].samples} == {"simple", "mlp"}
    c = httpclient.InferenceServerClient(srv.url)
    c.unload_model("simple")
    fam = scrape(srv)
    assert {s.labels["model"] for s in fam["nv_inference_count"].samples} == {"mlp"}
    c.close()


def test_counter_latencies_false_drops_duration_counters(server_factory, example_repo):
    srv = server_factory(example_repo, "--metrics-config", "counter_latencies=false")
    fam = scrape(srv)
    assert "nv_inference_count" in fam
    assert not set(DURATIONS) & set(fam)


# ---- flags ----------------------------------------------------------------------------------


def test_allow_metrics_false_closes_the_port(server_factory, example_repo):
    srv = server_factory(example_repo, "--allow-metrics=false")
    assert _port_closed(srv.metrics_port)
    assert httpclient.InferenceServerClient(srv.url).is_server_ready()
    assert "Metrics Service" not in srv.log()


def test_metrics_address_and_port(server_factory, example_repo):
    port = free_port()
    srv = server_factory(
        example_repo, "--metrics-port", str(port), "--metrics-address", "127.0.0.1"
    )
    assert srv.metrics_port == port
    assert "nv_inference_count" in scrape(srv)
    assert f"Started Metrics Service at 127.0.0.1:{port}" in srv.log()


def test_metrics_port_taken_fails_start(server_factory, example_repo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = server_factory(
            example_repo,
            "--metrics-port",
            str(port),
            "--metrics-address",
            "127.0.0.1",
            wait_ready=False,
        )
        assert srv.process.wait(30) != 0
    assert "failed to start Metrics Service" in srv.log()


def test_bad_metrics_config_is_refused(example_repo):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "naiad",
            "serve",
            "--model-repository",
            str(example_repo),
            "--metrics-config",
            "summary_latencies=true",
            "--http-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "summary_latencies=true is not supported" in proc.stderr


# ---- CPU and GPU metrics --------------------------------------------------------------------


def test_cpu_metrics(server_factory, example_repo):
    srv = server_factory(example_repo, "--metrics-interval-ms", "100")
    time.sleep(0.3)
    fam = scrape(srv)
    for name in ("nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes"):
        assert fam[name].type == "gauge"
        assert len(fam[name].samples) == 1 and fam[name].samples[0].labels == {}
    assert 0.0 <= value(fam, "nv_cpu_utilization") <= 1.0
    total, used = value(fam, "nv_cpu_memory_total_bytes"), value(fam, "nv_cpu_memory_used_bytes")
    assert 0 < used < total


def test_cpu_metrics_off(server_factory, example_repo):
    srv = server_factory(example_repo, "--allow-cpu-metrics=false")
    assert not {n for n in scrape(srv) if n.startswith("nv_cpu_")}


@pytest.mark.skipif(_gpu_available(), reason="a GPU is present")
def test_no_gpu_means_no_gpu_metrics_and_one_log_line(server_factory, example_repo):
    srv = server_factory(example_repo)
    fam = scrape(srv)
    assert not set(GPU_FAMILIES) & set(fam)
    assert not [n for n in fam if n.startswith("nv_gpu")]
    log = srv.log()
    assert log.count("GPU metrics disabled") == 1
    assert "Traceback" not in log


def test_gpu_metrics_off_by_flag(server_factory, example_repo):
    srv = server_factory(example_repo, "--allow-gpu-metrics=false")
    assert not set(GPU_FAMILIES) & set(scrape(srv))
    assert "GPU metrics" not in srv.log()


@pytest.mark.gpu
def test_gpu_metrics(server_factory, example_repo):
    if not _gpu_available():
        pytest.skip("no GPU with NVML (pip install 'naiad[gpu]' on a machine with an NVIDIA GPU)")
    srv = server_factory(example_repo, "--metrics-interval-ms", "200")
    time.sleep(0.5)
    fam = scrape(srv)
    uuids = {s.labels["gpu_uuid"] for s in fam["nv_gpu_memory_total_bytes"].samples}
    assert uuids and all(u.startswith(("GPU-", "MIG-")) for u in uuids)
    for s in fam["nv_gpu_utilization"].samples:
        assert 0.0 <= s.value <= 1.0
    for s in fam["nv_gpu_memory_total_bytes"].samples:
        assert s.value > 0
        assert 0 <= value(fam, "nv_gpu_memory_used_bytes", gpu_uuid=s.labels["gpu_uuid"]) <= s.value
    for s in fam["nv_gpu_power_usage"].samples:
        assert s.value > 0
    for s in fam["nv_gpu_power_limit"].samples:
        assert s.value > 0
    assert fam["nv_energy_consumption"].type == "counter"
    for s in fam["nv_energy_consumption"].samples:
        assert s.value >= 0


# ---- pure functions -------------------------------------------------------------------------


def test_parse_proc_files():
    busy, idle = parse_proc_stat(
        "cpu  100 5 50 1000 20 3 2 1 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1\n"
    )
    assert (busy, idle) == (100 + 5 + 50 + 3 + 2 + 1, 1000 + 20)
    total, used = parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 400 kB\n")
    assert (total, used) == (1000 * 1024, 600 * 1024)


def test_metrics_config_options():
    config = apply_metrics_config(
        MetricsConfig(), ["counter_latencies=false", "histogram_latencies=false"]
    )
    assert config.counter_latencies is False
    for bad in ("summary_latencies=true", "no_such_key=1", "counter_latencies=maybe", "novalue"):
        with pytest.raises(ValueError):
            apply_metrics_config(MetricsConfig(), [bad])


def test_render_escapes_and_keeps_foreign_counters():
    from prometheus_client import Counter, Gauge

    registry = CollectorRegistry()
    Counter("foreign_requests", "a prometheus_client counter", registry=registry).inc(2)
    Gauge("odd", "help with \\ and\nnewline", ["l"], registry=registry).labels('a"b\\c\nd').set(0.5)
    text = render(registry).decode()
    assert "# TYPE foreign_requests_total counter\nforeign_requests_total 2\n" in text
    assert "_created" not in text
    assert "# HELP odd help with \\\\ and\\nnewline\n" in text
    assert 'odd{l="a\\"b\\\\c\\nd"} 0.5\n' in text
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert parsed["odd"].samples[0].labels == {"l": 'a"b\\c\nd'}
