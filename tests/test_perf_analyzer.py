"""NVIDIA's perf_analyzer (the real C++ binary, 2.51.0) against naiad over HTTP and gRPC.

perf_analyzer comes from the ``tritonclient`` 2.51.0 wheel, set up by
``../shared/anchors/client/setup.sh`` (CI runs it before pytest, see ``.ci/run``). The tests find it
through ``NAIAD_PERF_ANALYZER`` or at ``.bench-venvs/client/bin/perf_analyzer`` and skip when it
is not there.

Every run uses short windows (``-p 300``) and no stability gate (``-s 999``: three windows, then
done), so each level takes about a second. perf_analyzer never looks at output values unless the
``--input-data`` JSON carries ``validation_data``; the JSON test gives it the right answers (and a
wrong one, which must fail). perf_analyzer validates only at batch 1 and without shared memory
(Triton 2.51 answers the same way: ``Output size doesn't match expected size``), so the batch and
shared-memory runs are checked through the server's statistics instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, start_server

RUN_TIMEOUT = 60
_THROUGHPUT = re.compile(
    r"(?:Concurrency: (\d+)|Request Rate: [\d.]+), throughput: ([\d.]+) infer/sec"
)


def _find_perf_analyzer() -> Path | None:
    env = os.environ.get("NAIAD_PERF_ANALYZER")
    candidate = Path(env) if env else ROOT / ".bench-venvs" / "client" / "bin" / "perf_analyzer"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    return None


PERF_ANALYZER = _find_perf_analyzer()


@pytest.fixture(scope="module")
def perf_analyzer() -> Path:
    if PERF_ANALYZER is None:
        pytest.skip(
            "perf_analyzer not found (set NAIAD_PERF_ANALYZER, or run "
            "`bash ../shared/anchors/client/setup.sh .bench-venvs/client`)"
        )
    try:
        probe = subprocess.run(
            [str(PERF_ANALYZER), "--version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"perf_analyzer at {PERF_ANALYZER} does not start: {exc}")
    if probe.returncode != 0:
        pytest.skip(f"perf_analyzer at {PERF_ANALYZER} does not start: {probe.stderr[-300:]}")
    return PERF_ANALYZER


DYNAMIC_CONFIG = """name: "mlp_dynamic"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "input" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "output" data_type: TYPE_FP32 dims: [ 16 ] } ]
dynamic_batching { max_queue_delay_microseconds: 5000 }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


@pytest.fixture(scope="module")
def pa_server(perf_analyzer, models, tmp_path_factory):
    """One naiad over the example models and ``mlp_dynamic`` (the mlp with dynamic batching)."""
    repo = tmp_path_factory.mktemp("pa_repo")
    for write in (
        models.write_simple,
        models.write_simple_string,
        models.write_simple_identity,
        models.write_mlp,
        models.write_simple_sequence,
    ):
        write(repo)
    models.write_model(repo, "mlp_dynamic", models.build_mlp(), DYNAMIC_CONFIG)
    srv = start_server(repo, log_dir=tmp_path_factory.mktemp("pa_logs"))
    yield srv
    srv.stop()


def run_pa(
    pa: Path, srv, model: str, *args: str, expect_ok: bool = True, protocol: str = "http"
) -> str:
    """Run perf_analyzer -i http (or grpc) against ``srv``; return its output (stdout+stderr)."""
    url = srv.grpc_url if protocol == "grpc" else srv.url
    cmd = [str(pa), "-m", model, "-u", url, "-i", protocol, "-p", "300", "-s", "999", *args]
    proc = subprocess.run(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    if expect_ok:
        assert proc.returncode == 0, (
            f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
            f"server log:\n{srv.log()[-3000:]}"
        )
        assert _THROUGHPUT.search(proc.stdout), proc.stdout[-3000:]
    return proc.stdout


def throughputs(output: str) -> dict[int, float]:
    """``{concurrency: infer/s}`` from perf_analyzer's closing lines (0 for a request rate)."""
    return {int(c or 0): float(t) for c, t in _THROUGHPUT.findall(output)}


def get_json(srv, path: str):
    with urllib.request.urlopen(srv.base + path, timeout=30) as resp:
        return json.loads(resp.read())


def counts(srv, model: str) -> tuple[int, int, int]:
    """(inference_count, execution_count, success count) of the model's one version."""
    s = get_json(srv, f"/v2/models/{model}/stats")["model_stats"][0]
    return s["inference_count"], s["execution_count"], s["inference_stats"]["success"]["count"]


def delta(before, after):
    return tuple(b - a for a, b in zip(before, after, strict=True))


# ---- simple: batch 1, batch 8, shared memory, JSON input data --------------------------------------


def test_simple_batch_1(perf_analyzer, pa_server):
    c0 = counts(pa_server, "simple")
    out = run_pa(perf_analyzer, pa_server, "simple", "-b", "1")
    inferences, executions, successes = delta(c0, counts(pa_server, "simple"))
    assert throughputs(out)[1] > 0
    assert inferences == executions == successes > 0


def test_simple_batch_8(perf_analyzer, pa_server):
    c0 = counts(pa_server, "simple")
    out = run_pa(perf_analyzer, pa_server, "simple", "-b", "8")
    inferences, executions, successes = delta(c0, counts(pa_server, "simple"))
    assert throughputs(out)[1] > 0
    # no dynamic batcher on simple: each request is one execution of 8 rows
    assert executions == successes > 0
    assert inferences == 8 * executions


def test_simple_concurrency_range(perf_analyzer, pa_server):
    out = run_pa(perf_analyzer, pa_server, "simple", "--concurrency-range", "1:2")
    assert set(throughputs(out)) == {1, 2}
    out = run_pa(
        perf_analyzer,
        pa_server,
        "simple",
        "--concurrency-range",
        "2:2",
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        "50",
    )
    assert throughputs(out)[2] > 0


def test_simple_system_shared_memory(perf_analyzer, pa_server):
    c0 = counts(pa_server, "simple")
    out = run_pa(
        perf_analyzer,
        pa_server,
        "simple",
        "--shared-memory",
        "system",
        "--concurrency-range",
        "1:2",
    )
    assert set(throughputs(out)) == {1, 2}
    inferences, executions, successes = delta(c0, counts(pa_server, "simple"))
    assert inferences == executions == successes > 0
    # perf_analyzer unregisters its regions when it is done
    assert get_json(pa_server, "/v2/systemsharedmemory/status") == []


def _simple_data(pairs):
    data, expected = [], []
    for a, b in pairs:
        data.append(
            {"INPUT0": {"content": a, "shape": [16]}, "INPUT1": {"content": b, "shape": [16]}}
        )
        expected.append(
            {
                "OUTPUT0": {"content": [x + y for x, y in zip(a, b, strict=True)]},
                "OUTPUT1": {"content": [x - y for x, y in zip(a, b, strict=True)]},
            }
        )
    return data, expected


def test_simple_input_data_json_validated(perf_analyzer, pa_server, tmp_path):
    """Real INPUT0/INPUT1 values with the right outputs as validation_data: perf_analyzer compares
    every answer byte for byte; a file with a wrong expected value makes it fail."""
    pairs = [
        (list(range(16)), [1] * 16),
        ([3] * 16, list(range(-8, 8))),
        ([-7] * 16, [2**30] * 16),
    ]
    data, expected = _simple_data(pairs)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"data": data, "validation_data": expected}))
    c0 = counts(pa_server, "simple")
    out = run_pa(
        perf_analyzer, pa_server, "simple", "--input-data", str(good), "--concurrency-range", "1:2"
    )
    assert set(throughputs(out)) == {1, 2}
    assert delta(c0, counts(pa_server, "simple"))[0] > 0
    # JSON tensors both ways too
    run_pa(
        perf_analyzer,
        pa_server,
        "simple",
        "--input-data",
        str(good),
        "--input-tensor-format",
        "json",
        "--output-tensor-format",
        "json",
    )

    expected[1]["OUTPUT0"]["content"][5] += 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": data, "validation_data": expected}))
    out = run_pa(perf_analyzer, pa_server, "simple", "--input-data", str(bad), expect_ok=False)
    assert "Output doesn't match expected output" in out, out[-2000:]


def test_simple_input_data_json_batch_8(perf_analyzer, pa_server, tmp_path):
    data, _ = _simple_data([(list(range(16)), [1] * 16), ([3] * 16, list(range(-8, 8)))])
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"data": data}))
    c0 = counts(pa_server, "simple")
    run_pa(perf_analyzer, pa_server, "simple", "-b", "8", "--input-data", str(path))
    inferences, executions, _ = delta(c0, counts(pa_server, "simple"))
    assert inferences == 8 * executions > 0


def test_simple_async_and_request_rate(perf_analyzer, pa_server):
    out = run_pa(perf_analyzer, pa_server, "simple", "--async", "--concurrency-range", "2:2")
    assert throughputs(out)[2] > 0
    out = run_pa(perf_analyzer, pa_server, "simple", "--request-rate-range", "200")
    assert throughputs(out)[0] > 0


# ---- other models ----------------------------------------------------------------------------------


def test_mlp(perf_analyzer, pa_server):
    c0 = counts(pa_server, "mlp")
    out = run_pa(perf_analyzer, pa_server, "mlp", "-b", "4", "--concurrency-range", "1:2")
    assert set(throughputs(out)) == {1, 2}
    inferences, executions, _ = delta(c0, counts(pa_server, "mlp"))
    assert inferences == 4 * executions > 0


def test_dynamic_batching(perf_analyzer, pa_server):
    """Four clients at once against a 5 ms queue delay: the batcher merges their requests."""
    c0 = counts(pa_server, "mlp_dynamic")
    out = run_pa(perf_analyzer, pa_server, "mlp_dynamic", "--concurrency-range", "4:4")
    assert throughputs(out)[4] > 0
    inferences, executions, successes = delta(c0, counts(pa_server, "mlp_dynamic"))
    assert inferences == successes > 0  # batch 1 per request
    assert executions < inferences, (inferences, executions)


def test_bytes_models(perf_analyzer, pa_server):
    run_pa(perf_analyzer, pa_server, "simple_string", "--string-data", "7")
    run_pa(perf_analyzer, pa_server, "simple_identity", "--shape", "INPUT0:4")


def test_sequence_model(perf_analyzer, pa_server):
    c0 = counts(pa_server, "simple_sequence")
    run_pa(perf_analyzer, pa_server, "simple_sequence", "--concurrency-range", "1:2")
    assert delta(c0, counts(pa_server, "simple_sequence"))[2] > 0


# ---- over gRPC (-i grpc), streaming included -------------------------------------------------------


def test_grpc_simple(perf_analyzer, pa_server, tmp_path):
    c0 = counts(pa_server, "simple")
    out = run_pa(perf_analyzer, pa_server, "simple", "--concurrency-range", "1:2", protocol="grpc")
    assert set(throughputs(out)) == {1, 2}
    inferences, executions, successes = delta(c0, counts(pa_server, "simple"))
    assert inferences == executions == successes > 0
    data, expected = _simple_data([(list(range(16)), [1] * 16), ([3] * 16, list(range(-8, 8)))])
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"data": data, "validation_data": expected}))
    run_pa(perf_analyzer, pa_server, "simple", "--input-data", str(good), protocol="grpc")
    expected[0]["OUTPUT1"]["content"][0] += 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": data, "validation_data": expected}))
    out = run_pa(
        perf_analyzer,
        pa_server,
        "simple",
        "--input-data",
        str(bad),
        protocol="grpc",
        expect_ok=False,
    )
    assert "Output doesn't match expected output" in out, out[-2000:]


def test_grpc_batch_shared_memory_and_bytes(perf_analyzer, pa_server):
    c0 = counts(pa_server, "simple")
    run_pa(perf_analyzer, pa_server, "simple", "-b", "8", protocol="grpc")
    inferences, executions, _ = delta(c0, counts(pa_server, "simple"))
    assert inferences == 8 * executions > 0
    out = run_pa(perf_analyzer, pa_server, "simple", "--shared-memory", "system", protocol="grpc")
    assert throughputs(out)[1] > 0
    assert get_json(pa_server, "/v2/systemsharedmemory/status") == []
    run_pa(perf_analyzer, pa_server, "simple_string", "--string-data", "7", protocol="grpc")
    run_pa(
        perf_analyzer, pa_server, "mlp", "--async", "--concurrency-range", "2:2", protocol="grpc"
    )


def test_grpc_streaming(perf_analyzer, pa_server):
    c0 = counts(pa_server, "simple")
    out = run_pa(
        perf_analyzer,
        pa_server,
        "simple",
        "--streaming",
        "--concurrency-range",
        "1:2",
        protocol="grpc",
    )
    assert set(throughputs(out)) == {1, 2}
    assert delta(c0, counts(pa_server, "simple"))[2] > 0


def test_grpc_streaming_sequence_model(perf_analyzer, pa_server):
    c0 = counts(pa_server, "simple_sequence")
    out = run_pa(
        perf_analyzer,
        pa_server,
        "simple_sequence",
        "--streaming",
        "--concurrency-range",
        "1:2",
        "--sequence-length",
        "5",
        protocol="grpc",
    )
    assert set(throughputs(out)) == {1, 2}
    assert delta(c0, counts(pa_server, "simple_sequence"))[2] > 0
