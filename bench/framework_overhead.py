#!/usr/bin/env python3
"""Server overhead of naiad's PyTorch backend: naiad infer/s against the same TorchScript model
called directly in this process, at concurrency 1 and 8, batch 1 and 32 (issue 10).

    .venv/bin/python bench/framework_overhead.py [-s 5] [-w 1] [-c 1,8] [-b 1,32]
                                                 [--models mlp,conv] [-r 1] [--port 27500]
                                                 [--json FILE]

Models: the MLP (FP32 [b, 16] -> [b, 4]) and the conv net (FP32 [b, 3, 16, 16] -> logits
[b, 10] and features [b, 8, 8, 8]) of plugins/backend-pytorch/tests/naiad_pytorch_models.py,
and conv_large (FP32 [b, 3, 64, 64], three conv layers -> [b, 10]), which spends its time in
compute rather than transport; all traced to TorchScript, served by one naiad (one CPU
instance, dynamic batching on, max batch 32).

- direct: torch.jit.load of the same file, torch.inference_mode(), intra-op threads = this
  process's CPUs (what naiad gives a one-instance model); C Python threads each calling the
  module in a closed loop on one fixed random batch.
- naiad: perf_analyzer (HTTP, binary tensors, C requests in flight, random data; set up by
  bench/setup.sh), or with --client python (or without perf_analyzer) C Python threads each
  with its own tritonclient.http client, in a closed loop on the same batch, all outputs.

infer/s counts rows (calls x batch). `ratio` is naiad / direct. `srv cpu%` is the server's
process tree, `cli cpu%` the client driving naiad (the client shares the machine's cores
with the server: on 2 cores that is the main cost at high rates), `other cpu%` the rest of the
machine during each measurement (all in % of one core): when it is more than a few %, the run
was disturbed. With -r > 1 each cell is the median round. Run it with the Python that
runs naiad (.venv): it needs torch and tritonclient.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib

MODELS_FILE = benchlib.ROOT / "plugins" / "backend-pytorch" / "tests" / "naiad_pytorch_models.py"
SHAPES = {
    "mlp": ("INPUT__0", (16,), ["OUTPUT__0"]),
    "conv": ("image", (3, 16, 16), ["logits__0", "features__1"]),
    "conv_large": ("image", (3, 64, 64), ["OUTPUT__0"]),
}
LARGE_CONFIG = """
platform: "pytorch_libtorch"
max_batch_size: 32
input [ { name: "image", data_type: TYPE_FP32, dims: [ 3, 64, 64 ] } ]
output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 10 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
dynamic_batching { }
"""


def write_large(torch, models, repo: Path) -> None:
    """conv_large: the kind of model the 0.9x target is about (compute, not transport, bound):
    FP32 [b, 3, 64, 64] -> conv 32 -> pool -> conv 64 -> pool -> conv 64 -> global pool -> 10."""
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    ).eval()
    models.write_model(
        repo,
        "conv_large",
        LARGE_CONFIG,
        lambda d: models.save_torchscript(net, torch.randn(2, 3, 64, 64), d),
    )


def _models():
    spec = importlib.util.spec_from_file_location("naiad_pytorch_models", MODELS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def direct(torch, path: Path, x: np.ndarray, conc: int, seconds: float, warmup: float) -> dict:
    """C threads calling the TorchScript module in a closed loop."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu").eval()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    tensor = torch.from_numpy(x)
    lat: list[list[float]] = [[] for _ in range(conc)]
    t_start, t_end = [0.0], [0.0]
    barrier = threading.Barrier(conc + 1)

    def worker(i: int) -> None:
        torch.set_num_threads(cpus)
        with torch.inference_mode():
            end = time.perf_counter() + warmup
            while time.perf_counter() < end:
                module(tensor)
            barrier.wait()
            mine = lat[i]
            while True:
                s = time.perf_counter()
                if s >= t_end[0]:
                    break
                module(tensor)
                mine.append(time.perf_counter() - s)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(conc)]
    for t in threads:
        t.start()
    t_end[0] = time.perf_counter() + warmup + seconds + 5  # until the barrier sets it
    barrier.wait()
    t_start[0] = time.perf_counter()
    t_end[0] = t_start[0] + seconds
    c0, meter = _cpu_seconds(), benchlib.CpuMeter(0)
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start[0]
    row = _row("direct", lat, x.shape[0], wall, cli_cpu=100 * (_cpu_seconds() - c0) / wall)
    row["other_cpu"] = meter.stop()["machine_cpu_pct"] - row["cli_cpu"]
    return row


def served_pa(srv, model: str, batch: int, conc: int, seconds: float, outdir: Path) -> dict:
    """perf_analyzer (HTTP, binary, sync, C in flight): 3 windows of seconds / 3."""
    row = benchlib.run_pa(
        srv, model, conc, max(1000, int(seconds * 1000 / 3)), outdir, "naiad", batch=batch
    )
    if row.get("failed"):
        raise RuntimeError(row["error"])
    return {
        "kind": "naiad",
        "infer_per_s": row["infer_per_s"],
        "p50_ms": row["p50_ms"],
        "p99_ms": row["p99_ms"],
        "cli_cpu": row["client_cpu_pct"],
        "srv_cpu": row["server_cpu_pct"],
        "avg_batch": row.get("avg_batch"),
        "other_cpu": row["machine_cpu_pct"] - row["server_cpu_pct"] - row["client_cpu_pct"],
    }


def served_python(
    client_mod, srv, model: str, x: np.ndarray, conc: int, seconds: float, warmup: float
) -> dict:
    """C threads, each with its own tritonclient.http client (binary tensors), closed loop.
    (The client's async_infer adds a ~10 ms floor per request: not used.)"""
    name, _, outputs = SHAPES[model]
    lat: list[list[float]] = [[] for _ in range(conc)]
    bounds = {"start": 0.0, "end": float("inf")}
    barrier = threading.Barrier(conc + 1)

    def worker(i: int) -> None:
        client = client_mod.InferenceServerClient(srv.hostport, network_timeout=120)
        inp = client_mod.InferInput(name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        wanted = [client_mod.InferRequestedOutput(o, binary_data=True) for o in outputs]
        end = time.perf_counter() + warmup
        while time.perf_counter() < end:
            client.infer(model, [inp], outputs=wanted)
        barrier.wait()
        while (s := time.perf_counter()) < bounds["end"]:
            client.infer(model, [inp], outputs=wanted)
            lat[i].append(time.perf_counter() - s)
        client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(conc)]
    for t in threads:
        t.start()
    barrier.wait()
    meter, c0 = benchlib.CpuMeter(srv.pid), _cpu_seconds()
    bounds["start"] = time.perf_counter()
    bounds["end"] = bounds["start"] + seconds
    for t in threads:
        t.join()
    cpu = meter.stop()
    wall = time.perf_counter() - bounds["start"]
    row = _row("naiad", lat, x.shape[0], wall, cli_cpu=100 * (_cpu_seconds() - c0) / wall)
    row["srv_cpu"] = cpu["server_cpu_pct"]
    row["other_cpu"] = cpu["machine_cpu_pct"] - row["srv_cpu"] - row["cli_cpu"]
    return row


def _row(kind: str, lat: list[list[float]], batch: int, wall: float, cli_cpu: float) -> dict:
    flat = np.array([v for part in lat for v in part]) * 1000
    return {
        "kind": kind,
        "calls": len(flat),
        "infer_per_s": len(flat) * batch / wall,
        "p50_ms": float(np.percentile(flat, 50)),
        "p99_ms": float(np.percentile(flat, 99)),
        "cli_cpu": cli_cpu,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-s", "--seconds", type=float, default=5.0)
    ap.add_argument("-w", "--warmup", type=float, default=1.0)
    ap.add_argument("-c", "--concurrency", default="1,8")
    ap.add_argument("-b", "--batch", default="1,32")
    ap.add_argument("--models", default="mlp,conv,conv_large")
    ap.add_argument("-r", "--rounds", type=int, default=1)
    ap.add_argument("--port", type=int, default=27500)
    ap.add_argument("--json", help="also write the rows here (JSON lines)")
    ap.add_argument(
        "--client",
        choices=["auto", "pa", "python"],
        default="auto",
        help="perf_analyzer (bench/setup.sh) or Python threads; auto: pa if set up",
    )
    args = ap.parse_args()

    import torch
    import tritonclient.http as httpclient

    models = _models()
    work = benchlib.tempdir("naiad-fw-")
    repo = models.write_repository(work / "repo")
    write_large(torch, models, repo)
    port = benchlib.free_ports(args.port, 1)
    srv = benchlib.start_naiad(repo, port, work, ["mlp", "conv", "conv_large"])
    use_pa = args.client == "pa" or (args.client == "auto" and benchlib.PA.exists())
    benchlib.log(f"naiad driven by {'perf_analyzer' if use_pa else 'Python threads'}")
    rows: list[dict] = []
    try:
        for _ in range(args.rounds):
            for model in args.models.split(","):
                path = repo / model / "1" / "model.pt"
                for batch in (int(b) for b in args.batch.split(",")):
                    x = (
                        np.random.default_rng(batch)
                        .standard_normal((batch, *SHAPES[model][1]))
                        .astype(np.float32)
                    )
                    for conc in (int(c) for c in args.concurrency.split(",")):
                        for kind in ("direct", "naiad"):
                            if kind == "direct":
                                row = direct(torch, path, x, conc, args.seconds, args.warmup)
                            elif use_pa:
                                row = served_pa(srv, model, batch, conc, args.seconds, work / "pa")
                            else:
                                row = served_python(
                                    httpclient, srv, model, x, conc, args.seconds, args.warmup
                                )
                            row.update(model=model, batch=batch, conc=conc)
                            benchlib.log(json.dumps(row))
                            rows.append(row)
    finally:
        srv.stop()
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(table(rows))
    print(
        f"\nnaiad driven by {'perf_analyzer' if use_pa else 'Python threads'}; "
        f"{benchlib.machine_info()}; "
        f"{benchlib.pkg_versions(benchlib.NAIAD_VENV / 'bin' / 'python', ['torch', 'naiad'])}"
    )


def table(rows: list[dict]) -> str:
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["batch"], r["conc"]), {}).setdefault(r["kind"], []).append(
            r
        )
    out = []
    for (model, batch, conc), kinds in groups.items():
        d, n = (_median(kinds.get(k, [])) for k in ("direct", "naiad"))
        out.append(
            [
                model,
                str(batch),
                str(conc),
                benchlib.fmt(d["infer_per_s"]),
                benchlib.fmt(n["infer_per_s"]),
                f"{n['infer_per_s'] / d['infer_per_s']:.2f}",
                f"{d['p50_ms']:.2f}",
                f"{n['p50_ms']:.2f}",
                f"{n['p99_ms']:.2f}",
                benchlib.fmt(n.get("srv_cpu")),
                benchlib.fmt(n["cli_cpu"]),
                benchlib.fmt(d["cli_cpu"]),
                f"{benchlib.fmt(d.get('other_cpu'))} / {benchlib.fmt(n.get('other_cpu'))}",
            ]
        )
    head = [
        "model",
        "batch",
        "conc",
        "direct infer/s",
        "naiad infer/s",
        "ratio",
        "direct p50 ms",
        "naiad p50 ms",
        "naiad p99 ms",
        "srv cpu%",
        "cli cpu%",
        "direct cpu%",
        "other cpu% direct / naiad",
    ]
    return benchlib.md_table(head, out)


def _median(rows: list[dict]) -> dict:
    if not rows:
        return {
            "infer_per_s": float("nan"),
            "p50_ms": float("nan"),
            "p99_ms": float("nan"),
            "cli_cpu": float("nan"),
        }
    ordered = sorted(rows, key=lambda r: r["infer_per_s"])
    return ordered[len(ordered) // 2]


if __name__ == "__main__":
    main()
