#!/usr/bin/env python3
"""Which perf_analyzer modes work against naiad (with Triton beside it as the reference).

    python3 bench/pa_features.py [-i 2000] [-c 1] [--servers naiad,triton] [--out DIR]

Starts naiad (anchors/models/make_repo.py --kind onnx) and tritonserver (--kind python), then runs
perf_analyzer 2.51.0 (-i http) on `simple` in each of these modes, one level of concurrency -c:
  default             binary tensors, random data, -b 1
  -b 8                batch 8 per request (simple has max_batch_size 8)
  shm system          --shared-memory system (inputs and outputs in POSIX shm regions)
  input-data json     --input-data FILE: a perf_analyzer JSON data file with fixed tensors
  input-data zero     --input-data zero
  async               --async (perf_analyzer's async HTTP client)
Prints ok/failed with infer/s and p50/p99, or perf_analyzer's error line. Stops both servers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import benchlib as B


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("-i", "--interval", type=int, default=2000)
    ap.add_argument("-c", "--concurrency", type=int, default=1)
    ap.add_argument("--servers", default="naiad,triton")
    ap.add_argument("--port", type=int, default=27800)
    ap.add_argument("--out")
    a = ap.parse_args()
    out = B.new_outdir("pa-features", a.out)
    want = a.servers.split(",")
    t_start = time.monotonic()
    data = out / "simple_input.json"
    data.write_text(
        json.dumps(
            {
                "data": [
                    {
                        "INPUT0": {"content": list(range(16)), "shape": [16]},
                        "INPUT1": {"content": [1] * 16, "shape": [16]},
                    },
                    {
                        "INPUT0": {"content": [3] * 16, "shape": [16]},
                        "INPUT1": {"content": list(range(-8, 8)), "shape": [16]},
                    },
                ]
            }
        )
    )
    modes = [
        ("default", 1, []),
        ("-b 8", 8, []),
        ("shm system", 1, ["--shared-memory", "system"]),
        ("input-data json", 1, ["--input-data", str(data)]),
        ("input-data zero", 1, ["--input-data", "zero"]),
        ("async", 1, ["--async"]),
    ]
    mk = str(B.ANCHORS / "models" / "make_repo.py")
    rows = []
    with B.Servers() as S:
        srv = {}
        base = B.free_ports(a.port, 20)
        if "naiad" in want:
            subprocess.run(
                [
                    str(B.NAIAD_VENV / "bin" / "python"),
                    mk,
                    str(out / "repo-onnx"),
                    "--kind",
                    "onnx",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            srv["naiad"] = S.add(B.start_naiad(out / "repo-onnx", base, out, ["simple"]))
        if "triton" in want:
            subprocess.run(
                [str(B.TRITON_VENV / "bin" / "python"), mk, str(out / "repo-python")],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            srv["triton"] = S.add(B.start_triton(out / "repo-python", base + 10, out, ["simple"]))
        for mode, batch, extra in modes:
            for name, s in srv.items():
                r = B.run_pa(
                    s,
                    "simple",
                    a.concurrency,
                    a.interval,
                    out / "pa",
                    f"{name}-{mode.replace(' ', '_')}",
                    batch=batch,
                    extra=extra,
                )
                r["mode"] = mode
                rows.append(r)
                B.log(
                    f"  {name} {mode}: "
                    + (
                        f"FAILED {r['error']}"
                        if r.get("failed")
                        else f"{r['infer_per_s']:.0f} infer/s"
                    )
                )
    head = ["mode", "target", "result", "infer/s", "p50 ms", "p99 ms", "srv cpu%", "other cpu%"]
    table = []
    for r in rows:
        if r.get("failed"):
            table.append(
                [
                    r["mode"],
                    r["target"],
                    "failed: " + r["error"].replace("|", "/"),
                    "",
                    "",
                    "",
                    "",
                    "",
                ]
            )
        else:
            other = r["machine_cpu_pct"] - r["client_cpu_pct"] - r["server_cpu_pct"]
            table.append(
                [
                    r["mode"],
                    r["target"],
                    "ok",
                    B.fmt(r["infer_per_s"]),
                    B.fmt(r["p50_ms"], 2),
                    B.fmt(r["p99_ms"], 2),
                    B.fmt(r["server_cpu_pct"]),
                    B.fmt(other),
                ]
            )
    text = (
        f"# perf_analyzer modes {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        f"machine: {B.machine_info()}\nsimple, -i http, concurrency {a.concurrency}, window "
        f"{a.interval} ms x3; total {time.monotonic() - t_start:.0f} s\n\n"
        + B.md_table(head, table)
        + "\n"
    )
    (out / "tables.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
