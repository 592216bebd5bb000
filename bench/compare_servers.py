#!/usr/bin/env python3
"""naiad beside NVIDIA Triton (python backend), MLServer and KServe, in one run (issue 3).

    python3 bench/compare_servers.py [-s 5] [-i 3000] [-r 1] [-c 1,8] [--out DIR]

Starts, on 127.0.0.1 (free ports from --port, default 27000):
  naiad     .venv/bin/naiad serve, repository = anchors/models/make_repo.py --kind onnx
  triton    anchors/triton/serve.sh (tritonserver 2.51.0), repository = make_repo.py --kind python
  mlserver  anchors/mlserver/serve.sh --workers 0 (MLServer 1.7.1, inference in the server process)
  kserve    anchors/kserve/serve.sh (KServe 0.21.0, 1 worker, quiet logging)
checks naiad and Triton with anchors/client/smoke.py (HTTP, outputs against numpy), then
drives them:
  perf_analyzer  naiad and triton (it needs Triton's /config endpoint), models simple,
                 identity_fp32, mlp; -i http (binary tensors), -b 1, one level per call
                 (concurrency 1 and 8), the mean of 3 windows of -i ms, no stability gate
                 (as anchors/client/bench.sh)
  loadgen.py     all four, models identity (identity_fp32 on naiad/Triton) and mlp, JSON and
                 --binary (MLServer has no binary extension: left out of the binary rows),
                 -s seconds after -w warm-up, as anchors/compare.sh
Every level runs each server in turn (interleaved, so drift hits all alike); -r repeats the whole
thing and the tables show medians. CPU columns: cli = the client process, srv = the server's
process tree, other = the rest of the machine (high = a disturbed run). Ratios are naiad ÷ other.
Stops every server by PID at the end (also on Ctrl-C). Raw rows: OUT/rows.jsonl; tables:
OUT/tables.md; --render ROWS... prints the tables of earlier runs (medians over all).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter

import benchlib as B

PA_MODELS = ["simple", "identity_fp32", "mlp"]
# loadgen group name -> per-server model name
LG_MODELS = {"identity": {"naiad": "identity_fp32", "triton": "identity_fp32"}, "mlp": {}}
ORDER = ["naiad", "triton", "mlserver", "kserve"]
NAIAD_PKGS = [
    "naiad",
    "naiad-backend-onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "numpy",
    "aiohttp",
    "uvloop",
]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-s", "--seconds", type=float, default=5, help="loadgen measured seconds (5)")
    ap.add_argument("-w", "--warmup", type=float, default=2, help="loadgen warm-up seconds (2)")
    ap.add_argument(
        "-i",
        "--interval",
        type=int,
        default=3000,
        help="perf_analyzer window in ms (3000; it measures 3 windows)",
    )
    ap.add_argument("-c", "--concurrency", default="1,8")
    ap.add_argument("-r", "--repeat", type=int, default=1, help="rounds (medians are shown)")
    ap.add_argument("--servers", default=",".join(ORDER), help="subset of " + ",".join(ORDER))
    ap.add_argument("--no-pa", action="store_true", help="skip perf_analyzer")
    ap.add_argument("--no-loadgen", action="store_true", help="skip loadgen")
    ap.add_argument("--port", type=int, default=27000)
    ap.add_argument("--out", help="results folder (default bench/results/DATE-compare)")
    ap.add_argument(
        "--render",
        nargs="+",
        metavar="ROWS",
        help="only print the tables of earlier rows.jsonl files (medians over all)",
    )
    a = ap.parse_args()
    if a.render:
        return rerender(a.render, a)
    concs = [int(c) for c in a.concurrency.split(",")]
    want = [s for s in ORDER if s in a.servers.split(",")]
    out = B.new_outdir("compare", a.out)
    t_start = time.monotonic()
    B.log(f"results in {out}")
    rows_path = out / "rows.jsonl"
    rows: list[dict] = []

    def keep(row):
        rows.append(row)
        with open(rows_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if row.get("tool") not in ("settings", "note", "done"):
            B.log_row(row)

    keep(dict(vars(a), tool="settings", rev=B.naiad_rev()))

    # ---------------------------------------------------------------- repositories
    repo_onnx, repo_py = out / "repo-onnx", out / "repo-python"
    mk = str(B.ANCHORS / "models" / "make_repo.py")
    subprocess.run(
        [str(B.NAIAD_VENV / "bin" / "python"), mk, str(repo_onnx), "--kind", "onnx"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    if "triton" in want:
        subprocess.run(
            [str(B.TRITON_VENV / "bin" / "python"), mk, str(repo_py), "--kind", "python"],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    notes: list[str] = []
    with B.Servers() as S:
        srv: dict[str, B.Server] = {}
        base = B.free_ports(a.port, 40)
        t0 = time.monotonic()
        if "naiad" in want:
            srv["naiad"] = S.add(B.start_naiad(repo_onnx, base, out, PA_MODELS))
        if "triton" in want:
            srv["triton"] = S.add(B.start_triton(repo_py, base + 10, out, PA_MODELS))
        if "mlserver" in want:
            srv["mlserver"] = S.add(
                B.start_anchor("mlserver", base + 20, out, ["--workers", "0"], "mlserver")
            )
        if "kserve" in want:
            srv["kserve"] = S.add(B.start_anchor("kserve", base + 30, out, [], "kserve"))
        B.log(f"servers up in {time.monotonic() - t0:.0f} s")

        # ------------------------------------------------------------ smoke (answers checked)
        for name in ("naiad", "triton"):
            if name not in srv:
                continue
            r = subprocess.run(
                [
                    str(B.VENVS / "client" / "bin" / "python"),
                    str(B.ANCHORS / "client" / "smoke.py"),
                    "-u",
                    srv[name].hostport,
                ],
                capture_output=True,
                text=True,
            )
            status = (
                "passed" if r.returncode == 0 else f"FAILED: {(r.stdout + r.stderr).strip()[-400:]}"
            )
            notes.append(f"anchors/client/smoke.py (HTTP) against {name}: {status}")
            B.log(notes[-1])

        pa_targets = [n for n in ("naiad", "triton") if n in srv]
        for rnd in range(1, a.repeat + 1):
            # -------------------------------------------------------- perf_analyzer
            if not a.no_pa:
                B.log(f"# round {rnd}/{a.repeat}: perf_analyzer")
                for model in PA_MODELS:
                    for c in concs:
                        for name in pa_targets:
                            keep(
                                B.run_pa(
                                    srv[name], model, c, a.interval, out / "pa", f"{name}-r{rnd}"
                                )
                            )
            # -------------------------------------------------------- loadgen
            if not a.no_loadgen:
                B.log(f"# round {rnd}/{a.repeat}: loadgen")
                for binary in (False, True):
                    for group, names in LG_MODELS.items():
                        for c in concs:
                            for name in srv:
                                if binary and name == "mlserver":
                                    continue  # no binary tensor extension in MLServer 1.7.1
                                keep(
                                    B.run_loadgen(
                                        srv[name],
                                        names.get(name, group),
                                        c,
                                        a.seconds,
                                        a.warmup,
                                        binary,
                                        name,
                                        group,
                                    )
                                )
        # statistics of naiad's models over the whole run (batching seen at the server)
        for name in pa_targets:
            for m in ("identity_fp32", "mlp"):
                cnt = B.model_counts(srv[name], m)
                if cnt and cnt[1]:
                    notes.append(
                        f"{name} {m}: inference_count {cnt[0]}, execution_count {cnt[1]} "
                        f"(avg batch {cnt[0] / cnt[1]:.2f} over the whole run)"
                    )
    # servers stopped here

    elapsed = time.monotonic() - t_start
    for n in notes:
        keep({"tool": "note", "text": n})
    keep({"tool": "done", "elapsed": elapsed})
    rows = [r for r in rows if r.get("tool") not in ("settings", "note", "done")]
    text = render(rows, a, notes, elapsed)
    (out / "tables.md").write_text(text)
    print(text)
    B.log(f"total {elapsed:.0f} s; rows {rows_path}")
    return 0


def rerender(paths: list[str], a) -> int:
    """The tables of earlier runs' rows.jsonl files together (medians over all their runs)."""
    rows, settings, notes, elapsed = B.load_rows(paths)
    for key, value in (settings[0] if settings else {}).items():
        if key not in ("tool", "render", "out"):
            setattr(a, key, value)
    runs = Counter(
        (r.get("tool"), r.get("target"), r.get("model"), r.get("protocol"), r.get("concurrency"))
        for r in rows
    )
    a.repeat = max(runs.values()) if runs else 0
    notes.append("rendered from " + ", ".join(paths))
    print(render(rows, a, notes, elapsed))
    return 0


def render(rows, a, notes, elapsed) -> str:
    parts = [
        f"# compare_servers {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"machine: {B.machine_info()}",
        f"naiad commit: {getattr(a, 'rev', None) or B.naiad_rev()}",
        "naiad: " + B.pkg_versions(B.NAIAD_VENV / "bin" / "python", NAIAD_PKGS),
        "triton venv: "
        + B.pkg_versions(B.TRITON_VENV / "bin" / "python", ["nvidia-pytriton", "numpy"]),
        f"settings: perf_analyzer window {a.interval} ms x3, "
        f"loadgen {a.seconds} s + {a.warmup} s warm-up, "
        f"concurrency {a.concurrency}, rounds (runs per row) {a.repeat}; total {elapsed:.0f} s",
        "",
    ]
    pa = [r for r in rows if r["tool"] == "perf_analyzer"]
    if pa:
        agg = B.aggregate(pa, ("target", "model", "concurrency"))
        head = [
            "model",
            "conc",
            "target",
            "infer/s",
            "(min-max)",
            "p50 ms",
            "p99 ms",
            "cli cpu%",
            "srv cpu%",
            "other cpu%",
            "avg batch",
            "naiad ÷ this infer/s",
            "this p50 ÷ naiad p50",
        ]
        out = []
        for model in PA_MODELS:
            for c in sorted({r["concurrency"] for r in pa}):
                n = agg.get(("naiad", model, c))
                for t in ("naiad", "triton"):
                    x = agg.get((t, model, c))
                    if x is None:
                        continue
                    out.append(
                        [
                            model,
                            str(c),
                            t,
                            *B.perf_cells(x),
                            B.fmt(x.get("avg_batch"), 2) if not x.get("failed") else "",
                            B.ratio(n, x) if t != "naiad" else "",
                            B.ratio(x, n, "p50_ms") if t != "naiad" else "",
                        ]
                    )
        parts += [
            "## perf_analyzer (HTTP, binary tensors, batch 1, sync)",
            "",
            B.md_table(head, out),
            "",
        ]
        parts += [f"- failed: {k}: {v['error']}" for k, v in agg.items() if v.get("failed")]
    lg = [r for r in rows if r["tool"] == "loadgen"]
    if lg:
        agg = B.aggregate(lg, ("target", "group", "protocol", "concurrency"))
        head = [
            "model",
            "proto",
            "conc",
            "target",
            "infer/s",
            "(min-max)",
            "p50 ms",
            "p99 ms",
            "cli cpu%",
            "srv cpu%",
            "other cpu%",
            "naiad ÷ this infer/s",
            "this p50 ÷ naiad p50",
        ]
        out = []
        for group in LG_MODELS:
            for proto in ("json", "binary"):
                for c in sorted({r["concurrency"] for r in lg}):
                    n = agg.get(("naiad", group, proto, c))
                    for t in ORDER:
                        x = agg.get((t, group, proto, c))
                        if x is None:
                            continue
                        out.append(
                            [
                                group,
                                proto,
                                str(c),
                                t,
                                *B.perf_cells(x),
                                B.ratio(n, x) if t != "naiad" else "",
                                B.ratio(x, n, "p50_ms") if t != "naiad" else "",
                            ]
                        )
        parts += ["## loadgen.py (1x16 FP32 per request)", "", B.md_table(head, out, left=4), ""]
        parts += [f"- failed: {k}: {v['error']}" for k, v in agg.items() if v.get("failed")]
    if notes:
        parts += ["", "notes:"] + [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.exit(main())
