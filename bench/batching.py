#!/usr/bin/env python3
"""Dynamic batching: naiad with and without it, beside NVIDIA Triton (python backend) and MLServer's
adaptive batching, on the anchors' MLP and on make_convnet.py's conv net (issue 5).

    python3 bench/batching.py [-c 1,8,32,64] [-i 2000] [-s 4] [-r 1] [--out DIR]

Models (bench/make_batching_repo.py; each with and without dynamic batching, one CPU instance):
  mlp_batch / mlp_nobatch          16->64->16 MLP, max_batch_size 64
  convnet_batch / convnet_nobatch  ResNet-style conv net, 3x224x224 FP32, max_batch_size 16,
                                   --conv-threads onnxruntime intra-op threads (default 1, in
                                   every server and in-process; 0 = naiad's default)
Servers, started together on 127.0.0.1 (free ports from --port, default 27500):
  naiad     the --kind onnx repository (onnxruntime backend)
  triton    tritonserver 2.51.0, the --kind python repository (MLP in numpy; conv net: onnxruntime
            inside the python stub), dynamic_batching { } = Triton's default (no queue delay)
  mlserver  MLServer 1.7.1, parallel_workers 0, the anchors' runtime (anchors/mlserver/
            anchor_runtime.py, onnxruntime); mlp_batch / convnet_batch with adaptive batching
            (max_batch_size 64 / 16, max_batch_time --mlserver-batch-time, default 0.001 s: MLServer
            turns adaptive batching off at 0); mlp_nobatch without
Steps: the conv net in-process (bench/inprocess_convnet.py, batch 1,2,4,8,16) before any server
starts; answers checked (bench/check_outputs.py); then
  perf_analyzer  naiad and triton, every model, -i http (binary), -b 1, concurrency -c one level per
                 call, 3 windows of -i ms, no stability gate; the servers' statistics give the
                 average batch per execution
  loadgen.py     JSON (MLServer has no binary extension): naiad vs MLServer on mlp_batch,
                 mlp_nobatch, convnet_batch (JSON conv net at concurrency <= 8 only: 3 MB bodies);
                 naiad also --binary on convnet_batch
After each conv-net level, the conv net in-process at round(naiad's average batch), under the same
machine load: the tables give server / in-process. --render ROWS... prints the tables of earlier
runs (medians over all of them).
Each level runs the servers in turn; -r repeats everything and the tables show medians. Stops
every server by PID at the end. Raw rows: OUT/rows.jsonl; tables: OUT/tables.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter

import benchlib as B

PA_MODELS = ["mlp_nobatch", "mlp_batch", "convnet_nobatch", "convnet_batch"]
VERSIONS = {
    "naiad": ["naiad", "onnxruntime", "onnxruntime-gpu", "numpy"],
    "triton": ["nvidia-pytriton", "onnxruntime", "numpy"],
    "mlserver": ["mlserver", "onnxruntime", "numpy"],
}


def start_mlserver(
    port: int, out, repo_onnx, batch_time: float, conv_max: int, conv_threads: int
) -> B.Server:
    """MLServer with adaptive batching: the anchors' runtime, our own model-settings."""
    venv = B.VENVS / "mlserver"
    B.need(venv / "bin" / "mlserver", "MLServer venv")
    for p in (port, port + 1, port + 2):
        if not B.port_free(p):
            raise RuntimeError(f"port {p} is taken")
    wd = out / "mlserver"
    repo = wd / "repo"
    if wd.exists():
        shutil.rmtree(wd)
    repo.mkdir(parents=True)
    (repo / "settings.json").write_text(
        json.dumps(
            {
                "debug": False,
                "host": "127.0.0.1",
                "http_port": port,
                "grpc_port": port + 1,
                "metrics_port": port + 2,
                "parallel_workers": 0,
                "load_models_at_startup": True,
            },
            indent=2,
        )
    )
    threads = conv_threads if conv_threads > 0 else max(1, os.cpu_count() or 1)
    specs = {
        "mlp_batch": ("mlp_batch", 16, 64, 1),
        "mlp_nobatch": ("mlp_nobatch", 16, 0, 1),
        "convnet_batch": ("convnet_batch", None, conv_max, threads),
    }
    for name, (src, dim, max_batch, intra) in specs.items():
        (repo / name).mkdir()
        shutil.copy(repo_onnx / src / "1" / "model.onnx", repo / name / "model.onnx")
        shape = [-1, dim] if dim else [-1, 3, 224, 224]
        oshape = [-1, dim] if dim else [-1, 10]
        ms = {
            "name": name,
            "implementation": "anchor_runtime.OnnxMLPRuntime",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": shape}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": oshape}],
            "parameters": {
                "uri": "./model.onnx",
                "extra": {"intra_op_num_threads": intra, "inter_op_num_threads": 1},
            },
        }
        if max_batch:
            ms.update(max_batch_size=max_batch, max_batch_time=batch_time)
        (repo / name / "model-settings.json").write_text(json.dumps(ms, indent=2))
    env = {k: v for k, v in os.environ.items() if k != "MLSERVER_PARALLEL_WORKERS"}
    env["PYTHONPATH"] = str(B.ANCHORS / "mlserver") + (
        ":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    logp = wd / "server.log"
    f = open(logp, "wb")
    p = subprocess.Popen(
        [str(venv / "bin" / "mlserver"), "start", str(repo)],
        cwd=wd,
        env=env,
        stdout=f,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    srv = B.Server("mlserver", p.pid, f"http://127.0.0.1:{port}", logp, p, "mlserver")
    B.wait_ready(srv, list(specs))
    B.log(f"mlserver ready: {srv.url} pid {srv.pid} (log {logp})")
    return srv


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-c", "--concurrency", default="1,8,32,64")
    ap.add_argument("-i", "--interval", type=int, default=2000, help="perf_analyzer window ms (x3)")
    ap.add_argument("-s", "--seconds", type=float, default=4, help="loadgen measured seconds")
    ap.add_argument("-w", "--warmup", type=float, default=1, help="loadgen warm-up seconds")
    ap.add_argument("-r", "--repeat", type=int, default=1)
    ap.add_argument("--models", default="mlp,convnet", help="mlp, convnet or both")
    ap.add_argument("--servers", default="naiad,triton,mlserver")
    ap.add_argument("--no-pa", action="store_true")
    ap.add_argument("--no-loadgen", action="store_true")
    ap.add_argument("--no-inprocess", action="store_true")
    ap.add_argument("--inprocess-seconds", type=float, default=3)
    ap.add_argument("--delay-us", type=int, default=0, help="max_queue_delay_microseconds (0)")
    ap.add_argument("--conv-max-batch", type=int, default=16)
    ap.add_argument(
        "--conv-threads",
        type=int,
        default=1,
        help="conv net intra-op threads everywhere (0: naiad's default, CPUs/instances)",
    )
    ap.add_argument("--mlserver-batch-time", type=float, default=0.001)
    ap.add_argument("--port", type=int, default=27500)
    ap.add_argument("--out")
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
    fams = a.models.split(",")
    pa_models = [m for m in PA_MODELS if m.split("_")[0] in fams]
    want = a.servers.split(",")
    out = B.new_outdir("batching", a.out)
    rows_path = out / "rows.jsonl"
    rows: list[dict] = []
    notes: list[str] = []
    t_start = time.monotonic()
    B.log(f"results in {out}")

    def keep(row):
        rows.append(row)
        with open(rows_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if row.get("tool") not in ("settings", "note", "done"):
            B.log_row(row)

    keep(dict(vars(a), tool="settings", rev=B.naiad_rev()))

    npy = str(B.NAIAD_VENV / "bin" / "python")
    repo_onnx, repo_py = out / "repo-onnx", out / "repo-python"
    mk = str(B.BENCH / "make_batching_repo.py")
    common = [
        "--delay-us",
        str(a.delay_us),
        "--conv-max-batch",
        str(a.conv_max_batch),
        "--conv-threads",
        str(a.conv_threads),
    ]
    subprocess.run(
        [npy, mk, str(repo_onnx), "--kind", "onnx", *common], check=True, stdout=subprocess.DEVNULL
    )
    if "triton" in want:
        subprocess.run(
            [str(B.TRITON_VENV / "bin" / "python"), mk, str(repo_py), "--kind", "python", *common],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    # ---------------------------------------------------------------- in-process (quiet machine)
    inproc_sizes = sorted({1, 2, 4, 8, a.conv_max_batch})
    if "convnet" in fams and not a.no_inprocess:
        B.log("# in-process conv net (sweep)")
        for row in inprocess(npy, repo_onnx, inproc_sizes, a.inprocess_seconds, a.conv_threads):
            keep(dict(row, target="in-process", concurrency=0, sweep=True))

    with B.Servers() as S:
        srv: dict[str, B.Server] = {}
        base = B.free_ports(a.port, 30)
        t0 = time.monotonic()
        if "naiad" in want:
            srv["naiad"] = S.add(B.start_naiad(repo_onnx, base, out, PA_MODELS))
        if "triton" in want:
            srv["triton"] = S.add(B.start_triton(repo_py, base + 10, out, PA_MODELS))
        if "mlserver" in want:
            srv["mlserver"] = S.add(
                start_mlserver(
                    base + 20,
                    out,
                    repo_onnx,
                    a.mlserver_batch_time,
                    a.conv_max_batch,
                    a.conv_threads,
                )
            )
        B.log(f"servers up in {time.monotonic() - t0:.0f} s")

        # effective scheduler of naiad's models (auto-complete must not add a batcher)
        for name in ("naiad", "triton"):
            if name in srv:
                for m in PA_MODELS:
                    code, body = B.http_get(f"{srv[name].url}/v2/models/{m}/config")
                    if code == 200:
                        has = "dynamic_batching" in json.loads(body)
                        if has != m.endswith("_batch"):
                            notes.append(
                                f"{name} {m}: effective config "
                                f"{'has' if has else 'lacks'} dynamic_batching"
                            )
        # ------------------------------------------------------------ answers checked
        checks = [
            ("naiad", pa_models, []),
            ("triton", pa_models, []),
            (
                "mlserver",
                [
                    m
                    for m in ("mlp_batch", "mlp_nobatch", "convnet_batch")
                    if m.split("_")[0] in fams
                ],
                ["--json-only"],
            ),
        ]
        for name, models, extra in checks:
            if name not in srv:
                continue
            r = subprocess.run(
                [npy, str(B.BENCH / "check_outputs.py"), srv[name].hostport, *models, *extra],
                capture_output=True,
                text=True,
            )
            lines = (r.stdout.strip() or r.stderr.strip()[-400:]).splitlines()
            notes.append(
                f"check_outputs.py {name}: "
                + ("all ok" if r.returncode == 0 else " | ".join(lines))
            )
            B.log(notes[-1])

        for rnd in range(1, a.repeat + 1):
            if not a.no_pa:
                B.log(f"# round {rnd}/{a.repeat}: perf_analyzer")
                for model in pa_models:
                    for c in concs:
                        batches = []
                        for name in ("naiad", "triton"):
                            if name in srv:
                                row = B.run_pa(
                                    srv[name],
                                    model,
                                    c,
                                    a.interval,
                                    out / "pa",
                                    f"{name}-r{rnd}",
                                    timeout=120 + 3 * a.interval / 100,
                                )
                                keep(row)
                                batches.append(row.get("avg_batch") or 1.0)
                        if model.startswith("convnet") and not a.no_inprocess and batches:
                            # the ceiling at the batch size the server formed, measured now
                            b = max(1, round(batches[0]))
                            for row in inprocess(
                                npy, repo_onnx, [b], a.inprocess_seconds, a.conv_threads
                            ):
                                keep(dict(row, target="in-process", model=model, concurrency=c))
            if not a.no_loadgen:
                B.log(f"# round {rnd}/{a.repeat}: loadgen (JSON)")
                lg = [(m, "16", True, False) for m in ("mlp_nobatch", "mlp_batch") if "mlp" in fams]
                if "convnet" in fams:
                    lg += [
                        ("convnet_batch", "3,224,224", False, False),
                        ("convnet_batch", "3,224,224", False, True),
                    ]
                for model, shape, _check, binary in lg:
                    for c in concs:
                        if model.startswith("convnet") and not binary and c > 8:
                            continue  # 3 MB JSON bodies: at c > 8 few or none finish in -s
                        for name in ("naiad", "mlserver"):
                            if name not in srv or (binary and name == "mlserver"):
                                continue
                            keep(
                                B.run_loadgen(
                                    srv[name],
                                    model,
                                    c,
                                    a.seconds,
                                    a.warmup,
                                    binary,
                                    name,
                                    model,
                                    shape=shape,
                                    check=False,
                                    timeout_s=60,
                                )
                            )
    elapsed = time.monotonic() - t_start
    for n in notes:
        keep({"tool": "note", "text": n})
    keep({"tool": "done", "elapsed": elapsed})
    rows = [r for r in rows if r.get("tool") not in ("settings", "note", "done")]
    text = render(rows, a, notes, elapsed, concs)
    (out / "tables.md").write_text(text)
    print(text)
    B.log(f"total {elapsed:.0f} s; rows {rows_path}")
    return 0


def inprocess(npy: str, repo_onnx, sizes: list[int], seconds: float, threads: int) -> list[dict]:
    """bench/inprocess_convnet.py on the repository's conv net file: one row per batch size."""
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as tmp:
        r = subprocess.run(
            [
                npy,
                str(B.BENCH / "inprocess_convnet.py"),
                "-b",
                ",".join(map(str, sizes)),
                "-s",
                str(seconds),
                "-w",
                "1",
                "--threads",
                str(threads),
                "--onnx",
                str(repo_onnx / "convnet_batch" / "1" / "model.onnx"),
                "--json",
                tmp.name,
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode:
            B.log(f"inprocess_convnet.py failed: {r.stderr[-400:]}")
            return []
        rows = [json.loads(line) for line in open(tmp.name) if line.strip()]
    for row in rows:
        B.log(
            f"  in-process batch {row['batch']}: {row['infer_per_s']:.1f} img/s "
            f"p50 {row['p50_ms']:.1f} ms/call"
        )
    return rows


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
    print(render(rows, a, notes, elapsed, [int(c) for c in str(a.concurrency).split(",")]))
    return 0


def render(rows, a, notes, elapsed, concs) -> str:
    parts = [
        f"# batching {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"machine: {B.machine_info()}",
        f"naiad commit: {getattr(a, 'rev', None) or B.naiad_rev()}",
        "naiad: " + B.pkg_versions(B.NAIAD_VENV / "bin" / "python", VERSIONS["naiad"]),
        "triton venv: " + B.pkg_versions(B.TRITON_VENV / "bin" / "python", VERSIONS["triton"]),
        "mlserver venv: "
        + B.pkg_versions(B.VENVS / "mlserver" / "bin" / "python", VERSIONS["mlserver"]),
        f"settings: perf_analyzer window {a.interval} ms x3; loadgen {a.seconds} s + {a.warmup} s; "
        f"max_queue_delay {a.delay_us} us; conv max_batch_size {a.conv_max_batch}, "
        f"intra-op threads {a.conv_threads or 'default'}; "
        f"MLServer max_batch_time {a.mlserver_batch_time} s; rounds (runs per row) {a.repeat}; "
        f"total {elapsed:.0f} s",
        "",
    ]
    pa = [r for r in rows if r["tool"] == "perf_analyzer"]
    agg = B.aggregate(pa, ("target", "model", "concurrency"))
    if pa:
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
            "naiad ÷ triton",
        ]
        out = []
        for model in PA_MODELS:
            for c in concs:
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
                            B.ratio(agg.get(("naiad", model, c)), x) if t == "triton" else "",
                        ]
                    )
        parts += [
            "## perf_analyzer (HTTP, binary, batch 1 per request)",
            "",
            B.md_table(head, out),
            "",
        ]
        head = [
            "model",
            "conc",
            "naiad batch ÷ nobatch",
            "triton batch ÷ nobatch",
            "naiad factor ÷ triton factor",
            "naiad batch infer/s (p50/p99 ms)",
            "triton batch infer/s (p50/p99 ms)",
        ]
        out = []
        for fam in ("mlp", "convnet"):
            for c in concs:
                n_b, n_n = (
                    agg.get(("naiad", f"{fam}_batch", c)),
                    agg.get(("naiad", f"{fam}_nobatch", c)),
                )
                t_b, t_n = (
                    agg.get(("triton", f"{fam}_batch", c)),
                    agg.get(("triton", f"{fam}_nobatch", c)),
                )
                if not (n_b or t_b):
                    continue
                fn, ft = B.ratio(n_b, n_n), B.ratio(t_b, t_n)
                ff = f"{float(fn) / float(ft):.2f}" if "-" not in (fn, ft) else "-"

                def cell(x):
                    return (
                        "-"
                        if not x or x.get("failed")
                        else f"{x['infer_per_s']:.0f} ({x['p50_ms']:.2f}/{x['p99_ms']:.2f})"
                    )

                out.append([fam, str(c), fn, ft, ff, cell(n_b), cell(t_b)])
        parts += ["## batching factor (perf_analyzer)", "", B.md_table(head, out, left=2), ""]
    lg = [r for r in rows if r["tool"] == "loadgen"]
    if lg:
        lagg = B.aggregate(lg, ("target", "model", "protocol", "concurrency"))
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
            "naiad ÷ mlserver",
        ]
        out = []
        for model in ("mlp_nobatch", "mlp_batch", "convnet_batch"):
            for proto in ("json", "binary"):
                for c in concs:
                    for t in ("naiad", "mlserver"):
                        x = lagg.get((t, model, proto, c))
                        if x is None:
                            continue
                        out.append(
                            [
                                model,
                                proto,
                                str(c),
                                t,
                                *B.perf_cells(x),
                                B.ratio(lagg.get(("naiad", model, proto, c)), x)
                                if t == "mlserver"
                                else "",
                            ]
                        )
        parts += [
            "## loadgen.py: naiad vs MLServer (adaptive batching on *_batch)",
            "",
            B.md_table(head, out, left=4),
            "",
        ]
        parts += [f"- failed: {k}: {v['error']}" for k, v in lagg.items() if v.get("failed")]
    ip = [r for r in rows if r["tool"] == "inprocess"]
    if ip:
        iagg = B.aggregate([r for r in ip if r.get("sweep")], ("batch",))
        head = ["batch", "images/s", "(min-max)", "p50 ms/call", "p99 ms/call", "process cpu%"]
        out = []
        for (b,), v in sorted(iagg.items()):
            if v.get("failed"):
                continue
            cpu = B.med([r.get("cpu_pct") for r in ip if r.get("sweep") and r["batch"] == b])
            out.append(
                [
                    str(b),
                    B.fmt(v["infer_per_s"], 1),
                    f"{v['min']:.1f}-{v['max']:.1f}" if v["runs"] > 1 else "",
                    B.fmt(v["p50_ms"], 1),
                    B.fmt(v["p99_ms"], 1),
                    B.fmt(cpu),
                ]
            )
        parts += [
            "## conv net in-process, before the servers start (onnxruntime, naiad's "
            "session options)",
            "",
            B.md_table(head, out, left=1),
            "",
        ]
        live = B.aggregate([r for r in ip if not r.get("sweep")], ("model", "concurrency"))
        head = [
            "server model",
            "conc",
            "target",
            "infer/s",
            "p50 ms",
            "p99 ms",
            "avg batch",
            "in-process batch",
            "in-process img/s (p50 ms/call)",
            "server ÷ in-process",
        ]
        out = []
        for model in ("convnet_nobatch", "convnet_batch"):
            for c in concs:
                ref = live.get((model, c))
                ref_b = B.med(
                    [
                        r["batch"]
                        for r in ip
                        if not r.get("sweep") and r["model"] == model and r["concurrency"] == c
                    ]
                )
                for t in ("naiad", "triton"):
                    x = agg.get((t, model, c))
                    if not x or x.get("failed"):
                        continue
                    ok = ref and not ref.get("failed")
                    out.append(
                        [
                            model,
                            str(c),
                            t,
                            B.fmt(x["infer_per_s"], 1),
                            B.fmt(x["p50_ms"], 1),
                            B.fmt(x["p99_ms"], 1),
                            B.fmt(x.get("avg_batch") or 1.0, 2),
                            B.fmt(ref_b),
                            f"{ref['infer_per_s']:.1f} ({ref['p50_ms']:.1f})" if ok else "-",
                            B.ratio(x, ref) if ok else "-",
                        ]
                    )
        parts += [
            "## conv net: server vs in-process at the batch size naiad formed",
            "",
            "(in-process = inprocess_convnet.py at round(naiad's average batch per "
            "execution), run right after the two servers' perf_analyzer level, so the "
            "machine's load is the same)",
            "",
            B.md_table(head, out),
            "",
        ]
    fails = [f"- failed: {k}: {v['error']}" for k, v in agg.items() if v.get("failed")]
    parts += fails
    if notes:
        parts += ["", "notes:"] + [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.exit(main())
