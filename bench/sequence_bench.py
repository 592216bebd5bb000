#!/usr/bin/env python3
"""The sequence batcher: sequences/s and per-step latency, naiad beside NVIDIA Triton (issue 6).

    python3 bench/sequence_bench.py [-c 1,8,32] [-L 20] [-i 3000] [-r 1] [--servers naiad,triton]

Models (bench/make_sequence_repo.py; one CPU instance, max_batch_size 32, so 32 sequences fit in
slots at once):
  seq_direct    Triton's simple_sequence arithmetic (stateless), Direct strategy
  seq_implicit  an accumulator kept as implicit state, Direct strategy
  seq_oldest    the same accumulator, Oldest strategy (no queue delay)
Servers, started together on 127.0.0.1 (free ports from --port, default 27700):
  naiad   the ONNX graphs (onnxruntime backend)
  triton  tritonserver 2.51.0 with python-backend models of the same arithmetic (the pip-installable
          Triton has no onnxruntime backend), its own sequence batcher and implicit state
perf_analyzer in sequence mode: -i http, concurrency C = C sequences in flight, each of -L steps
(uint64 ids, START on the first step, END on the last), random INT32 input, 3 windows of -i ms.
A step is one request; sequences/s = infer/s / L. The servers' statistics give the average batch.
Each level runs the servers in turn; -r repeats everything and the tables show medians. Stops
every server by PID at the end. Raw rows: OUT/rows.jsonl; tables: OUT/tables.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import benchlib as B

MODELS = ["seq_direct", "seq_implicit", "seq_oldest"]
NAIAD_PKGS = ["naiad", "onnxruntime", "onnxruntime-gpu", "numpy"]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-c", "--concurrency", default="1,8,32")
    ap.add_argument("-L", "--sequence-length", type=int, default=20)
    ap.add_argument("-i", "--interval", type=int, default=3000, help="perf_analyzer window ms (x3)")
    ap.add_argument("-r", "--repeat", type=int, default=1)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--servers", default="naiad,triton")
    ap.add_argument(
        "--before",
        help="also serve the ONNX graphs with naiad from this checkout of an earlier commit "
        "(server 'before', PYTHONPATH = its core/ and plugins/*/; see before_after.py)",
    )
    ap.add_argument("--port", type=int, default=27700)
    ap.add_argument("--out")
    a = ap.parse_args()
    concs = [int(c) for c in a.concurrency.split(",")]
    models = a.models.split(",")
    want = a.servers.split(",")
    if a.before:
        want = ["before"] + [w for w in want if w != "before"]
    out = B.new_outdir("sequence", a.out)
    rows: list[dict] = []
    B.log(f"results in {out}")
    mk = str(B.BENCH / "make_sequence_repo.py")
    repos = {"naiad": out / "repo-onnx", "triton": out / "repo-python", "before": out / "repo-b"}
    naiad_py = B.NAIAD_VENV / "bin" / "python"
    pythons = {"naiad": naiad_py, "before": naiad_py, "triton": B.TRITON_VENV / "bin" / "python"}
    kinds = {"naiad": "onnx", "before": "onnx", "triton": "python"}
    pa_extra = ["--sequence-length", str(a.sequence_length), "--sequence-length-variation", "0"]

    def keep(row: dict) -> None:
        rows.append(row)
        with open(out / "rows.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if row.get("failed"):
            B.log(f"  {row['target']} {row['model']} c={row['concurrency']}: FAILED {row['error']}")
        else:
            B.log(
                f"  {row['target']} {row['model']} c={row['concurrency']}: "
                f"{row['infer_per_s']:.0f} infer/s p50 {row['p50_ms']:.2f} "
                f"p99 {row['p99_ms']:.2f} ms batch {B.fmt(row.get('avg_batch'), 2)} "
                f"srv {B.fmt(row.get('server_cpu_pct'))}%"
            )

    t0 = time.monotonic()
    with B.Servers() as servers:
        started = {}
        base = B.free_ports(a.port, 3 * len(want))
        for i, name in enumerate(want):
            subprocess.run(
                [str(pythons[name]), mk, str(repos[name]), "--kind", kinds[name]],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            port = base + 3 * i
            if name in ("naiad", "before"):
                env = None
                if name == "before":
                    from before_after import before_env

                    env = before_env(Path(a.before).resolve())
                srv = B.start_naiad(
                    repos[name],
                    port,
                    out,
                    models,
                    name=name,
                    extra=["--metrics-port", str(port + 2)],
                    env=env,
                )
            else:
                srv = B.start_triton(repos[name], port, out, models, name=name)
            started[name] = servers.add(srv)
        for rnd in range(a.repeat):
            order = B.rotated(want, rnd)
            for model in models:
                for conc in concs:
                    for name in order:
                        row = B.run_pa(
                            started[name],
                            model,
                            conc,
                            a.interval,
                            out / "pa",
                            f"r{rnd}-{name}",
                            extra=pa_extra,
                        )
                        row["round"] = rnd
                        keep(row)
    tables = render(rows, want, models, concs, a.sequence_length)
    header = (
        f"{B.machine_info()}\n"
        f"naiad: {B.pkg_versions(pythons['naiad'], NAIAD_PKGS)}\n"
        + (
            f"triton: {B.pkg_versions(pythons['triton'], ['nvidia-pytriton', 'numpy'])}\n"
            if "triton" in want
            else ""
        )
        + f"sequence length {a.sequence_length}, perf_analyzer 3 x {a.interval} ms, "
        f"{a.repeat} round(s), {time.monotonic() - t0:.0f} s in all\n"
    )
    (out / "tables.md").write_text(header + "\n" + tables + "\n")
    print(header + "\n" + tables)
    return 0


def render(rows: list[dict], want: list[str], models: list[str], concs: list[int], length: int):
    agg = B.aggregate(rows, ("target", "model", "concurrency"))
    head = [
        "model",
        "conc",
        "server",
        "infer/s",
        "seq/s",
        "p50 ms",
        "p99 ms",
        "avg batch",
        "srv cpu%",
        "other cpu%",
        "naiad ÷ triton",
        "naiad ÷ before",
    ]
    body = []
    for model in models:
        for conc in concs:
            for name in want:
                r = agg.get((name, model, conc))
                if r is None or r.get("failed"):
                    body.append([model, str(conc), name, "failed" if r else "n/a"] + [""] * 8)
                    continue
                body.append(
                    [
                        model,
                        str(conc),
                        name,
                        B.fmt(r["infer_per_s"]),
                        B.fmt(r["infer_per_s"] / length, 1),
                        B.fmt(r["p50_ms"], 2),
                        B.fmt(r["p99_ms"], 2),
                        B.fmt(r["avg_batch"], 2),
                        B.fmt(r["server_cpu_pct"]),
                        B.fmt(r["other_cpu_pct"]),
                        B.ratio(r, agg.get(("triton", model, conc))) if name == "naiad" else "",
                        B.ratio(r, agg.get(("before", model, conc))) if name == "naiad" else "",
                    ]
                )
    return B.md_table(head, body, left=3)


if __name__ == "__main__":
    raise SystemExit(main())
