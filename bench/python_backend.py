#!/usr/bin/env python3
"""The same Triton python-backend ``model.py`` files through naiad in both instance modes
(``instance_isolation`` ``process``, the default for python models, and ``thread``) and through
tritonserver's python backend, with perf_analyzer over HTTP and gRPC (issue 16).

    python3 bench/python_backend.py [-i 2000] [-r 2] [-c 1,8] [--protocols http,grpc]
                                    [--busy-ms 3] [--busy-conc 4] [--before CHECKOUT] [--out DIR]

Models (one CPU instance each unless said):
  add_sub   NVIDIA's python_backend example (FP32 [4] + [4] -> sum, difference)
  image     identity over a 3x224x224 FP32 image (602 KB in, 602 KB out)
  busy1     pure-Python loop of --busy-ms per request, count: 1   (the CPU-bound case:
  busy2     the same loop, count: 2                                does count 2 use both cores?)
  simple    the ONNX model of the same name (INT32 [1,16] add/sub), naiad's floor for a request:
            run on the ``thread`` server (ONNX instances are threads there) and on Triton (its
            onnxruntime backend), so thread mode's python rows can be read against it
Servers, all up at once on 127.0.0.1 (free ports from --port): ``process`` and ``thread`` (naiad,
the same repository but for the isolation parameter) and ``triton`` (tritonserver 2.51.0 python
backend; left out when its anchor is not set up: bash bench/setup.sh). perf_analyzer: -b 1,
sync, one level per call, 3 windows of -i ms, no stability gate; random data. Each (model,
protocol, level) runs the servers in turn, the order rotating each round; -r repeats. The busy
models run over HTTP at --busy-conc clients, and the table shows the CPU each of the server's
processes used (from /proc/PID/stat), so "count 2 uses both cores" is read off, not assumed.
Targets (issue 16): process >= 1x Triton's infer/s; thread >= 2x Triton's infer/s and <= 0.5x
its p50. ``--before CHECKOUT`` adds a server ``before``: naiad from another checkout (e.g.
``git worktree add --detach ../wt-before <commit>``) in process mode, for before/after rows in
the same rotation. Raw rows: OUT/rows.jsonl; tables: OUT/tables.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import benchlib as B
import tritonpy_models as tm

IMAGE = """
name: "image"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

IDENTITY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())]) for r in requests]
"""

BUSY_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: {count} kind: KIND_CPU }} ]
"""

# A loop that holds the GIL: the same SPIN_N iterations in every server (calibrated once by this
# script before any server starts, so that instances starting together cannot skew it).
BUSY = """
import triton_python_backend_utils as pb_utils

SPIN_N = {n}


def spin(n):
    x = 0
    for i in range(n):
        x += i * i
    return x


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            spin(SPIN_N)
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x)]))
        return out
"""

FAST_MODELS = ["add_sub", "image"]
BUSY_MODELS = ["busy1", "busy2"]
#: not a python model: the ONNX floor, on these servers only
ONNX_FLOOR = "simple"
FLOOR_SERVERS = ("thread", "triton")


def spin(n: int) -> int:
    x = 0
    for i in range(n):
        x += i * i
    return x


def spin_count(ms: float) -> int:
    """Iterations of ``spin`` that take about ``ms`` here (best of 5)."""
    best = min(_timed(200_000) for _ in range(5))
    return max(1, int(200_000 * ms / 1000 / best))


def _timed(n: int) -> float:
    t = time.perf_counter()
    spin(n)
    return time.perf_counter() - t


def write_repo(repo: Path, mode: str | None, spin_n: int) -> None:
    extra = (
        f'parameters {{ key: "instance_isolation" value: {{ string_value: "{mode}" }} }}\n'
        if mode
        else ""
    )
    tm.write(repo, "add_sub", tm.ADD_SUB, tm.add_sub_config("add_sub"), extra)
    tm.write(repo, "image", IDENTITY, IMAGE, extra)
    for name, count in (("busy1", 1), ("busy2", 2)):
        tm.write(
            repo, name, BUSY.format(n=spin_n), BUSY_CONFIG.format(name=name, count=count), extra
        )
    simple = repo / ONNX_FLOOR
    if not simple.exists():
        shutil.copytree(B.ROOT / "examples" / "model_repository" / ONNX_FLOOR, simple)


def proc_ticks(root: int) -> dict[int, tuple[str, int]]:
    """pid -> (command name, utime+stime ticks) of root and its live descendants."""
    found = {}
    procs = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (s := B._stat(int(d))):
            procs[int(d)] = s
    todo = [root]
    while todo:
        p = todo.pop()
        if p in procs:
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                cmd = "?"
            found[p] = (cmd[-60:].strip(), procs[p][1])
        todo.extend(k for k, (pp, _) in procs.items() if pp == p)
    return found


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-i", "--interval", type=int, default=2000, help="perf_analyzer window ms (x3)")
    ap.add_argument("-r", "--repeat", type=int, default=2)
    ap.add_argument("-c", "--concurrency", default="1,8")
    ap.add_argument("--protocols", default="http,grpc")
    ap.add_argument("--models", default=",".join([*FAST_MODELS, ONNX_FLOOR, *BUSY_MODELS]))
    ap.add_argument("--servers", default="process,thread,triton")
    ap.add_argument("--busy-ms", type=float, default=3.0, help="CPU per busy request (ms)")
    ap.add_argument("--busy-conc", type=int, default=4, help="clients on the busy models")
    ap.add_argument("--port", type=int, default=27600)
    ap.add_argument("--before", help="checkout of an earlier naiad: adds server 'before'")
    ap.add_argument("--out")
    a = ap.parse_args()
    concs = [int(c) for c in a.concurrency.split(",")]
    protocols = a.protocols.split(",")
    models = a.models.split(",")
    want = a.servers.split(",")
    if a.before and "before" not in want:
        want.insert(0, "before")
    if "triton" in want and not (B.TRITON_VENV / "bin" / "tritonserver").exists():
        B.log("no tritonserver (bash bench/setup.sh): triton left out")
        want.remove("triton")
    out = B.new_outdir("pyback", a.out)
    B.log(f"results in {out}")
    rows: list[dict] = []

    def keep(row: dict) -> None:
        rows.append(row)
        with open(out / "rows.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if row.get("tool") == "perf_analyzer":
            B.log_row(row)

    keep(dict(vars(a), tool="settings", rev=B.naiad_rev()))
    spin_n = spin_count(a.busy_ms)
    keep({"tool": "note", "spin_n": spin_n})
    t0 = time.monotonic()
    with B.Servers() as S:
        srv: dict[str, B.Server] = {}
        base = B.free_ports(a.port, 10 * len(want))
        for i, name in enumerate(want):
            repo = out / f"repo-{name}"
            mode = {"triton": None, "before": "process"}.get(name, name)
            write_repo(repo, mode, spin_n)
            port = base + 10 * i
            if name == "triton":
                srv[name] = S.add(B.start_triton(repo, port, out, models))
            elif name == "before":
                from before_after import before_env

                env = before_env(Path(a.before).resolve())
                srv[name] = S.add(B.start_naiad(repo, port, out, models, name=name, env=env))
            else:
                srv[name] = S.add(B.start_naiad(repo, port, out, models, name=name))
        for rnd in range(a.repeat):
            order = B.rotated(want, rnd)
            for model in models:
                busy = model in BUSY_MODELS
                for proto in ["http"] if busy else protocols:
                    for c in [a.busy_conc] if busy else concs:
                        for name in order:
                            if model == ONNX_FLOOR and name not in FLOOR_SERVERS:
                                continue
                            s = srv[name]
                            hp = f"127.0.0.1:{int(s.hostport.rsplit(':', 1)[1]) + 1}"
                            before = proc_ticks(s.pid) if busy else {}
                            t = time.monotonic()
                            row = B.run_pa(
                                s,
                                model,
                                c,
                                a.interval,
                                out / "pa",
                                f"{name}-r{rnd}-{proto}",
                                protocol=proto,
                                hostport=hp if proto == "grpc" else None,
                            )
                            if busy:
                                dt = time.monotonic() - t
                                after = proc_ticks(s.pid)
                                row["procs"] = sorted(
                                    (
                                        (100.0 * (v[1] - before[p][1]) / B.CLK / dt, v[0])
                                        for p, v in after.items()
                                        if p in before
                                    ),
                                    reverse=True,
                                )
                            keep(row)
    text = render(rows, a, want, models, concs, protocols, time.monotonic() - t0)
    (out / "tables.md").write_text(text)
    print(text)
    return 0


def render(rows, a, want, models, concs, protocols, elapsed) -> str:
    pa = [r for r in rows if r.get("tool") == "perf_analyzer"]
    agg = B.aggregate(pa, ("target", "model", "protocol", "concurrency"))
    runs: dict[tuple, list[str]] = {}
    for r in pa:
        key = (r["target"], r["model"], r["protocol"], r["concurrency"])
        runs.setdefault(key, []).append("fail" if r.get("failed") else f"{r['infer_per_s']:.0f}")
    head = ["model", "proto", "conc", "server", "infer/s", "runs", "p50 ms", "p99 ms"]
    head += ["cli cpu%", "srv cpu%", "other cpu%", "÷ triton infer/s", "p50 ÷ triton p50"]
    body = []
    for model in [m for m in models if m in (*FAST_MODELS, ONNX_FLOOR)]:
        for proto in protocols:
            for c in concs:
                tri = agg.get(("triton", model, proto, c))
                for name in want:
                    x = agg.get((name, model, proto, c))
                    if x is None:
                        continue
                    cells = B.perf_cells(x)
                    body.append(
                        [model, proto, str(c), name, cells[0]]
                        + [" / ".join(runs[(name, model, proto, c)]), *cells[2:]]
                        + [
                            B.ratio(x, tri) if name != "triton" else "",
                            B.ratio(x, tri, "p50_ms") if name != "triton" else "",
                        ]
                    )
    parts = [
        f"# python_backend {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"machine: {B.machine_info()}",
        f"naiad commit: {B.naiad_rev()}",
        f"perf_analyzer -b 1 sync, window {a.interval} ms x3, rounds {a.repeat}, servers "
        f"rotating; {elapsed:.0f} s",
        "",
        B.md_table(head, body, left=4),
    ]
    busy = [m for m in models if m in BUSY_MODELS]
    if busy:
        head = ["model", "server", "infer/s", "runs", "p50 ms", "srv cpu%", "other cpu%"]
        head += ["busiest processes (cpu% of one core, last run)"]
        body = []
        for name in want:
            for model in busy:
                key = (name, model, "http", a.busy_conc)
                x = agg.get(key)
                if x is None:
                    continue
                last = [r for r in pa if (r["target"], r["model"]) == (name, model)][-1]
                procs = "; ".join(f"{p:.0f}% {cmd}" for p, cmd in last.get("procs", [])[:3])
                cells = B.perf_cells(x)
                body.append(
                    [model, name, cells[0], " / ".join(runs[key]), cells[2], cells[5], cells[6]]
                    + [procs]
                )
        parts += [
            "",
            f"## CPU-bound model ({a.busy_ms} ms pure-Python loop per request, measured in the "
            f"bench driver), HTTP, "
            f"{a.busy_conc} clients; busy1 = count 1, busy2 = count 2",
            "",
            B.md_table(head, body, left=2),
        ]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.exit(main())
