#!/usr/bin/env python3
"""Server CPU time per HTTP request under perf_analyzer: a figure a shared machine does not move
much (issue 14: where naiad's time per request goes, before and after a change).

    python3 bench/http_cpu.py [--before ../wt-before] [-i 1500] [-r 3] [-c 1,8] [--models ...]
    python3 bench/http_cpu.py --sequence [--models seq_direct] ...   (sequence_bench's models)
    python3 bench/http_cpu.py --protocol grpc [--image] ...   (the same over gRPC; --image adds
        grpc_bench.py's 3x224x224 FP32 identity_image)

Servers as in before_after.py (``before`` from --before with PYTHONPATH into that checkout,
``naiad`` from this one; Triton's C++ onnxruntime backend with ``--servers ...,triton``), one
repository (anchors/models/make_repo.py --kind onnx). For each (model, level, server) and round:
perf_analyzer ``-i http -b 1`` as before_after.py runs it, and around it the server's CPU ticks
(utime + stime of it and its children, /proc/PID/stat) and its ``inference_count`` (statistics
extension; Triton counts the same way). The figure is µs of server CPU per inference over the
whole perf_analyzer run, warm-up included: ticks are 10 ms, so runs of a few seconds give it to
about 1 %. Servers alternate in each round, the order rotating. ``--sequence`` serves the ONNX
graphs of make_sequence_repo.py instead and runs perf_analyzer in sequence mode as
sequence_bench.py does (sequences of 20 requests); Triton is left out there (its sequence
models are python-backend ones).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import benchlib as B
from before_after import start_servers

MODELS = ["simple", "identity_fp32", "mlp"]
SEQ_MODEL = "seq_direct"
ORDER = ["before", "naiad", "triton"]


def measure(
    srv: B.Server,
    model: str,
    conc: int,
    interval: int,
    outdir: Path,
    tag: str,
    extra: list[str] | None = None,
    protocol: str = "http",
) -> dict:
    c0 = B.model_counts(srv, model)
    t0 = B.tree_ticks(srv.pid)
    hostport = None
    if protocol == "grpc":  # naiad's and Triton's gRPC port: HTTP's + 1
        host, port = srv.hostport.rsplit(":", 1)
        hostport = f"{host}:{int(port) + 1}"
    row = B.run_pa(
        srv, model, conc, interval, outdir, tag, extra=extra, protocol=protocol, hostport=hostport
    )
    t1 = B.tree_ticks(srv.pid)
    c1 = B.model_counts(srv, model)
    n = (c1[0] - c0[0]) if c0 and c1 else 0
    row["requests"] = n
    row["cpu_us_per_req"] = 1e6 * (t1 - t0) / B.CLK / n if n else None
    return row


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--before", help="checkout of an earlier commit")
    ap.add_argument("-i", "--interval", type=int, default=1500, help="perf_analyzer window ms (x3)")
    ap.add_argument("-c", "--concurrency", default="1,8")
    ap.add_argument("-r", "--repeat", type=int, default=3)
    ap.add_argument("--models", help=f"default {','.join(MODELS)} ({SEQ_MODEL} with --sequence)")
    ap.add_argument("--sequence", action="store_true", help="sequence models, sequence mode")
    ap.add_argument("--servers", default="before,naiad")
    ap.add_argument("--protocol", choices=("http", "grpc"), default="http")
    ap.add_argument("--image", action="store_true", help="add grpc_bench's identity_image")
    ap.add_argument("--port", type=int, default=27600)
    ap.add_argument("--extra", default="", help="extra naiad serve flags (space-separated)")
    ap.add_argument("--out")
    a = ap.parse_args()
    want = [s for s in ORDER if s in a.servers.split(",") and (s != "before" or a.before)]
    concs = [int(c) for c in a.concurrency.split(",")]
    models = (a.models or (SEQ_MODEL if a.sequence else ",".join(MODELS))).split(",")
    out = B.new_outdir("http-cpu", a.out)
    B.log(f"results in {out}")
    repo = out / "repo-onnx"
    if a.sequence:
        want = [w for w in want if w != "triton"]
        make = [str(B.NAIAD_VENV / "bin" / "python"), str(B.BENCH / "make_sequence_repo.py")]
        pa_extra = ["--sequence-length", "20", "--sequence-length-variation", "0"]
    else:
        make = [str(B.TRITON_VENV / "bin" / "python"), str(B.ANCHORS / "models" / "make_repo.py")]
        pa_extra = None
    subprocess.run([*make, str(repo), "--kind", "onnx"], check=True, stdout=subprocess.DEVNULL)
    if a.image:
        from grpc_bench import IMAGE, make_repo

        make_repo("onnx", repo, image=True)
        if IMAGE not in models:
            models.append(IMAGE)
    extra = a.extra.split() if a.extra else None
    rows: list[dict] = []
    t_start = time.strftime("%H:%M", time.gmtime())
    load0 = Path("/proc/loadavg").read_text().split()[0]
    with B.Servers() as S:
        before = Path(a.before).resolve() if a.before else None
        srv = start_servers(S, want, repo, out, models, a.port, before, extra)
        names = list(srv)
        for rnd in range(a.repeat):
            order = B.rotated(names, rnd)
            for model in models:
                for c in concs:
                    for name in order:
                        tag = f"{name}-r{rnd}"
                        row = measure(
                            srv[name], model, c, a.interval, out / "pa", tag, pa_extra, a.protocol
                        )
                        rows.append(row)
                        with open(out / "rows.jsonl", "a") as f:
                            f.write(json.dumps(row) + "\n")
                        other = (
                            (row.get("machine_cpu_pct") or 0)
                            - (row.get("server_cpu_pct") or 0)
                            - (row.get("client_cpu_pct") or 0)
                        )
                        B.log(
                            f"{name:7s} {model:14s} c={c} {row.get('infer_per_s', 0):8.0f}/s "
                            f"{row['cpu_us_per_req'] or 0:6.1f} µs/req other {other:4.0f}%"
                        )
    load1 = Path("/proc/loadavg").read_text().split()[0]
    head = ["model", "c"] + [f"{n} µs/req" for n in names] + [f"{n} infer/s" for n in names]
    table = []
    for model in models:
        for c in concs:
            cells_cpu, cells_tp = [], []
            for n in names:
                mine = [r for r in rows if r["target"] == n and r["model"] == model]
                mine = [r for r in mine if r["concurrency"] == c and r.get("cpu_us_per_req")]
                us = [r["cpu_us_per_req"] for r in mine]
                tp = [r.get("infer_per_s", 0) for r in mine]
                cells_cpu.append(
                    f"{statistics.median(us):.1f} ({' / '.join(f'{u:.0f}' for u in us)})"
                    if us
                    else "-"
                )
                cells_tp.append(f"{statistics.median(tp):.0f}" if tp else "-")
            table.append([model, str(c), *cells_cpu, *cells_tp])
    text = (
        f"# http_cpu {time.strftime('%Y-%m-%d', time.gmtime())} {t_start}–"
        f"{time.strftime('%H:%M UTC', time.gmtime())}, load {load0} → {load1}\n"
        f"rev {B.naiad_rev()}; perf_analyzer -i {a.protocol} -b 1, window {a.interval} ms x3, "
        f"{a.repeat} rounds; µs of server CPU per inference: median (runs)\n\n"
        + B.md_table(head, table)
        + "\n"
    )
    (out / "tables.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
