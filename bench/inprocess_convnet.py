#!/usr/bin/env python3
"""The conv net of make_convnet.py called directly in-process with onnxruntime: the ceiling a server
can reach on it (issue 5's "naiad >= 0.9x in-process" target).

    .venv/bin/python bench/inprocess_convnet.py [-b 1,2,4,8,16] [-s 5] [-w 1] [--threads 0]
                                                [--json FILE]

One InferenceSession on the CPU execution provider with the session options naiad's onnxruntime
backend uses for a one-instance model (graph optimisation ENABLE_ALL, sequential execution,
intra-op threads = this process's CPUs / 1 unless --threads), fed one random FP32 batch
[b, 3, 224, 224] (built once) in a closed loop, one call at a time, for -s seconds after -w seconds
of warm-up, per batch size. Prints a markdown table: images/s (= calls/s x b), calls/s, p50/p99 per
call in ms, CPU % of the process (of one core). Run it with the Python that runs naiad (.venv), so
both use the same onnxruntime build.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_convnet


def session(path: str, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    so.intra_op_num_threads = threads if threads > 0 else cpus
    return (
        ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"]),
        so.intra_op_num_threads,
        ort.__version__,
    )


def measure(sess, batch: int, seconds: float, warmup: float) -> dict:
    x = (
        np.random.default_rng(batch)
        .standard_normal((batch, make_convnet.C, make_convnet.H, make_convnet.W))
        .astype(np.float32)
    )
    feed = {"input": x}
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        sess.run(["output"], feed)
    lat = []
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    end = t0 + seconds
    while True:
        s = time.perf_counter()
        if s >= end and lat:
            break
        sess.run(["output"], feed)
        lat.append(time.perf_counter() - s)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    ms = np.array(lat) * 1000
    return {
        "tool": "inprocess",
        "model": "convnet",
        "batch": batch,
        "calls": len(lat),
        "infer_per_s": len(lat) * batch / wall,
        "calls_per_s": len(lat) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "cpu_pct": 100.0 * cpu / wall,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-b", "--batch", default="1,2,4,8,16", help="batch sizes (comma list)")
    ap.add_argument("-s", "--seconds", type=float, default=5.0)
    ap.add_argument("-w", "--warmup", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: the CPUs)")
    ap.add_argument("--onnx", help="model file (default: build make_convnet.build() in a temp dir)")
    ap.add_argument("--json", help="append one JSON line per batch size to this file")
    a = ap.parse_args()
    path = a.onnx
    if not path:
        import onnx

        path = os.path.join(tempfile.mkdtemp(prefix="convnet-"), "model.onnx")
        onnx.save(make_convnet.build(), path)
    sess, threads, version = session(path, a.threads)
    print(
        f"# in-process onnxruntime {version}, CPUExecutionProvider, {threads} intra-op threads, "
        f"{os.cpu_count()} CPUs, loadavg {open('/proc/loadavg').read().split()[:3]}",
        file=sys.stderr,
    )
    rows = []
    for b in (int(v) for v in a.batch.split(",")):
        r = measure(sess, b, a.seconds, a.warmup)
        r.update(threads=threads, onnxruntime=version)
        rows.append(r)
        print(
            f"  batch {b}: {r['infer_per_s']:.1f} img/s, p50 {r['p50_ms']:.1f} ms, "
            f"p99 {r['p99_ms']:.1f} ms",
            file=sys.stderr,
        )
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(r) + "\n")
    print("| batch | images/s | calls/s | p50 ms/call | p99 ms/call | process cpu% |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['batch']} | {r['infer_per_s']:.1f} | {r['calls_per_s']:.1f} | {r['p50_ms']:.1f} "
            f"| {r['p99_ms']:.1f} | {r['cpu_pct']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
