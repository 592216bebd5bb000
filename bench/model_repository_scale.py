#!/usr/bin/env python3
"""Model management at scale (issue 8's benchmark; prints figures, asserts nothing).

Builds a repository of N small ONNX models (copies of the `simple` example), then measures:

1. start-up time until the server logs "naiad is ready", and the server's resident memory;
2. one POLL scan with nothing changed (``naiad.watch.snapshot`` + diff, in-process, median of 20);
3. request latency (p50/p99) on one model while other models are reloaded in a loop through the
   EXPLICIT load API (a "reload storm"), against the same traffic without reloads.

    python bench/model_repository_scale.py [--models 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def load_make_models():
    spec = importlib.util.spec_from_file_location(
        "make_models", ROOT / "examples" / "make_models.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_repo(repo: Path, n: int) -> None:
    make_models = load_make_models()
    make_models.write_simple(repo)
    template = repo / "simple"
    config = (template / "config.pbtxt").read_text()
    for i in range(n - 1):
        target = repo / f"simple_{i:04d}"
        (target / "1").mkdir(parents=True)
        shutil.copyfile(template / "1" / "model.onnx", target / "1" / "model.onnx")
        (target / "config.pbtxt").write_text(
            config.replace('name: "simple"', f'name: "simple_{i:04d}"')
            + "\ninstance_group [{ kind: KIND_CPU count: 1 }]\n"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(repo: Path, *args: str) -> tuple[subprocess.Popen, int, float, Path]:
    port = free_port()
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "naiad",
            "serve",
            "--model-repository",
            str(repo),
            "--http-address",
            "127.0.0.1",
            "--http-port",
            str(port),
            "--allow-metrics=false",
            *args,
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    while "naiad is ready" not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            raise SystemExit(f"naiad exited:\n{log.read_text()}")
        time.sleep(0.05)
    return proc, port, time.monotonic() - t0, log


def poll_scan_ms(repo: Path, rounds: int = 20) -> float:
    from naiad import watch

    before = watch.snapshot([repo])
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        after = watch.snapshot([repo])
        changes = watch.diff(before, after)
        times.append((time.perf_counter() - t0) * 1000)
        assert not changes
    return statistics.median(times)


def latencies(port: int, seconds: float, storm: bool) -> tuple[float, float, int, int]:
    import tritonclient.http as httpclient

    url = f"127.0.0.1:{port}"
    stop = threading.Event()
    reloads = 0

    def reloader():
        nonlocal reloads
        c = httpclient.InferenceServerClient(url, network_timeout=120)
        i = 0
        while not stop.is_set():
            c.load_model(f"simple_{i % 50:04d}")
            reloads += 1
            i += 1
        c.close()

    c = httpclient.InferenceServerClient(url)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [
        httpclient.InferInput("INPUT0", [1, 16], "INT32"),
        httpclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    for inp in inputs:
        inp.set_data_from_numpy(a)
    thread = threading.Thread(target=reloader) if storm else None
    if thread:
        thread.start()
    samples, errors = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        try:
            c.infer("simple", inputs)
        except Exception:
            errors += 1
        samples.append((time.perf_counter() - t0) * 1000)
    stop.set()
    if thread:
        thread.join()
    c.close()
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)], errors, reloads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--keep", help="build the repository here and keep it")
    args = ap.parse_args()
    repo = Path(args.keep or tempfile.mkdtemp(prefix="naiad-scale-"))
    if not (repo / "simple").exists():
        t0 = time.monotonic()
        build_repo(repo, args.models)
        print(f"built {args.models} models in {time.monotonic() - t0:.1f} s at {repo}")
    results: dict[str, object] = {"models": args.models, "cpus": os.cpu_count()}
    proc, port, startup, log = start(repo, "--model-control-mode=explicit", "--load-model=*")
    try:
        results["startup_s"] = round(startup, 2)
        results["rss_mb"] = round(rss_mb(proc.pid), 1)
        results["poll_scan_ms"] = round(poll_scan_ms(repo), 1)
        p50, p99, err, _ = latencies(port, args.seconds, storm=False)
        results.update(quiet_p50_ms=round(p50, 3), quiet_p99_ms=round(p99, 3), quiet_errors=err)
        p50, p99, err, reloads = latencies(port, args.seconds, storm=True)
        results.update(
            storm_p50_ms=round(p50, 3),
            storm_p99_ms=round(p99, 3),
            storm_errors=err,
            reloads=reloads,
        )
    finally:
        proc.terminate()
        proc.wait(60)
        log.unlink(missing_ok=True)
        if not args.keep:
            shutil.rmtree(repo, ignore_errors=True)
    print(json.dumps(results))
    print()
    print(
        "| models | start-up to ready | RSS | no-change POLL scan | p50 / p99 quiet | "
        "p50 / p99 during reload storm | reloads | errors |"
    )
    print("|---|---|---|---|---|---|---|---|")
    r = results
    print(
        f"| {r['models']} | {r['startup_s']} s | {r['rss_mb']} MB | {r['poll_scan_ms']} ms | "
        f"{r['quiet_p50_ms']} / {r['quiet_p99_ms']} ms | {r['storm_p50_ms']} / "
        f"{r['storm_p99_ms']} ms | {r['reloads']} | {r['quiet_errors'] + r['storm_errors']} |"
    )


if __name__ == "__main__":
    main()
