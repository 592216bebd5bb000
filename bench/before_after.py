#!/usr/bin/env python3
"""naiad at an earlier commit, naiad here, and tritonserver's C++ onnxruntime backend, in one run
(issue 14: "no worse than before; >= 0.8x Triton C++ on every perf_analyzer row").

    python3 bench/before_after.py --before ../wt-before [-i 2000] [-r 2] [-c 1,8] [--out DIR]

--before: a checkout of the earlier commit (e.g. ``git worktree add ../wt-before 9616bbb``). It runs
with this checkout's .venv and PYTHONPATH = its core/ and plugins/*/ folders (the editable
installs of the venv come after PYTHONPATH, so the earlier code is what gets imported; the log
line "imports from" says where naiad came from). Servers, on 127.0.0.1 (free ports from --port):
  before   naiad from --before, repository = anchors/models/make_repo.py --kind onnx
  naiad    naiad from this checkout, same repository
  triton   anchors/triton/serve.sh (tritonserver 2.51.0, C++ onnxruntime backend), same kind
perf_analyzer as compare_servers.py: -i http (binary tensors), -b 1, one level per call, mean of
3 windows of -i ms, no stability gate; models simple, identity_fp32, mlp. Every (model, level)
runs the three servers in turn, the order rotating each round; -r repeats the whole thing. The
table shows the median and every run's infer/s, so the spread is visible; ratios are of medians.
Answers are checked first with anchors/client/smoke.py against all three.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import benchlib as B

MODELS = ["simple", "identity_fp32", "mlp"]
ORDER = ["before", "naiad", "triton"]


def before_env(checkout: Path) -> dict[str, str]:
    paths = [checkout / "core"] + sorted(p for p in (checkout / "plugins").glob("*") if p.is_dir())
    return {"PYTHONPATH": ":".join(str(p) for p in paths)}


def start_servers(
    S: B.Servers,
    want: list[str],
    repo: Path,
    out: Path,
    models: list[str],
    port: int,
    before: Path | None,
    extra: list[str] | None = None,
) -> dict[str, B.Server]:
    """The servers of ``want`` ("before" from the ``before`` checkout, "naiad" from this one,
    "triton" with its C++ onnxruntime backend) on ports from ``port`` up, ready."""
    srv: dict[str, B.Server] = {}
    base = B.free_ports(port, 30)
    if "before" in want:
        assert before is not None, "--before is needed for the 'before' server"
        env = before_env(before)
        srv["before"] = S.add(B.start_naiad(repo, base, out, models, "before", extra, env))
    if "naiad" in want:
        srv["naiad"] = S.add(B.start_naiad(repo, base + 10, out, models, extra=extra))
    if "triton" in want:
        srv["triton"] = S.add(B.start_triton(repo, base + 20, out, models))
    return srv


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--before", required=True, help="checkout of the earlier commit")
    ap.add_argument("-i", "--interval", type=int, default=2000, help="perf_analyzer window ms (x3)")
    ap.add_argument("-c", "--concurrency", default="1,8")
    ap.add_argument("-r", "--repeat", type=int, default=2)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--servers", default=",".join(ORDER))
    ap.add_argument("--port", type=int, default=27400)
    ap.add_argument("--out")
    a = ap.parse_args()
    before = Path(a.before).resolve()
    concs = [int(c) for c in a.concurrency.split(",")]
    models = a.models.split(",")
    want = [s for s in ORDER if s in a.servers.split(",")]
    out = B.new_outdir("before-after", a.out)
    rows: list[dict] = []
    B.log(f"results in {out}")

    def keep(row: dict) -> None:
        rows.append(row)
        with open(out / "rows.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if row.get("tool") == "perf_analyzer":
            B.log_row(row)

    rev_before = subprocess.run(
        ["git", "-C", str(before), "log", "-1", "--format=%h %cI"], capture_output=True, text=True
    ).stdout.strip()
    keep(dict(vars(a), tool="settings", rev=B.naiad_rev(), rev_before=rev_before))
    repo = out / "repo-onnx"
    subprocess.run(
        [
            str(B.TRITON_VENV / "bin" / "python"),
            str(B.ANCHORS / "models" / "make_repo.py"),
            str(repo),
            "--kind",
            "onnx",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    notes = [f"before = {rev_before} ({before}); naiad = {B.naiad_rev()}"]
    t0 = time.monotonic()
    with B.Servers() as S:
        srv = start_servers(S, want, repo, out, models, a.port, before)
        if "before" in srv:
            where = subprocess.run(
                [str(B.NAIAD_VENV / "bin" / "python"), "-c", "import naiad; print(naiad.__file__)"],
                capture_output=True,
                text=True,
                env=dict(__import__("os").environ, **before_env(before)),
            ).stdout.strip()
            notes.append(f"before imports from {where}")
        for name, s in srv.items():
            r = subprocess.run(
                [
                    str(B.VENVS / "client" / "bin" / "python"),
                    str(B.ANCHORS / "client" / "smoke.py"),
                    "-u",
                    s.hostport,
                ],
                capture_output=True,
                text=True,
            )
            ok = "passed" if r.returncode == 0 else "FAILED: " + (r.stdout + r.stderr)[-300:]
            notes.append(f"smoke.py (HTTP) against {name}: {ok}")
            B.log(notes[-1])
        names = list(srv)
        for rnd in range(a.repeat):
            order = B.rotated(names, rnd)
            for model in models:
                for c in concs:
                    for name in order:
                        keep(
                            B.run_pa(srv[name], model, c, a.interval, out / "pa", f"{name}-r{rnd}")
                        )
    elapsed = time.monotonic() - t0
    text = render(rows, a, notes, elapsed)
    (out / "tables.md").write_text(text)
    print(text)
    return 0


def render(rows: list[dict], a, notes: list[str], elapsed: float) -> str:
    pa = [r for r in rows if r.get("tool") == "perf_analyzer"]
    agg = B.aggregate(pa, ("target", "model", "concurrency"))
    runs: dict[tuple, list[str]] = {}
    for r in pa:
        key = (r["target"], r["model"], r["concurrency"])
        runs.setdefault(key, []).append("fail" if r.get("failed") else f"{r['infer_per_s']:.0f}")
    head = ["model", "conc", "target", "infer/s (median)", "runs", "p50 ms", "p99 ms"]
    head += ["cli cpu%", "srv cpu%", "other cpu%", "÷ before", "÷ triton"]
    out = []
    for model in a.models.split(","):
        for c in (int(x) for x in a.concurrency.split(",")):
            for t in ORDER:
                x = agg.get((t, model, c))
                if x is None:
                    continue
                cells = B.perf_cells(x)
                out.append(
                    [model, str(c), t, cells[0], " / ".join(runs[(t, model, c)]), *cells[2:]]
                    + [
                        B.ratio(x, agg.get(("before", model, c))) if t != "before" else "",
                        B.ratio(x, agg.get(("triton", model, c))) if t != "triton" else "",
                    ]
                )
    return (
        "\n".join(
            [
                f"# before_after {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
                f"machine: {B.machine_info()}",
                f"perf_analyzer -i http -b 1, window {a.interval} ms x3, rounds {a.repeat}, "
                f"servers rotating; {elapsed:.0f} s",
                "",
                B.md_table(head, out),
                "",
                *[f"- {n}" for n in notes],
            ]
        )
        + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())
