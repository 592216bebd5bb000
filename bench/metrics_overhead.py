#!/usr/bin/env python3
"""Request-path cost of metrics: naiad's infer/s with metrics on vs off, in one run.

    .venv/bin/python bench/metrics_overhead.py [--rounds 4] [--seconds 10] [-c 1,8] [--binary]

Starts two naiad servers over ``examples/model_repository`` (``mlp``): one with metrics on
(Triton's defaults: port open, CPU metrics polled every 2 s, GPU metrics where there is a GPU,
and a scraper hitting ``/metrics`` every ``--scrape-every`` s during the runs, like Prometheus)
and one with ``--allow-metrics=false``. It drives each in turn with the anchors' ``loadgen.py``
(``../shared/anchors`` beside the checkout, or ``--anchors``), alternating the order round by
round (on/off, off/on, ...) so drift hits both alike, and prints the medians per concurrency
level with the difference. Both servers run the whole time; the idle one costs next to nothing.

Not a test: the numbers depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Target:
    """One naiad process and what was measured on it."""

    name: str
    args: list[str]
    port: int = 0
    metrics_port: int | None = None
    proc: subprocess.Popen | None = None
    log: Path | None = None
    runs: list[dict] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, repo: Path, workdir: Path) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "naiad", "serve", "--model-repository", str(repo)]
        cmd += ["--http-address", "127.0.0.1", "--http-port", str(self.port), *self.args]
        self.log = workdir / f"naiad-{self.name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"naiad ({self.name}) exited:\n{self.log.read_text()}")
            if "naiad is ready" in self.log.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise SystemExit(f"naiad ({self.name}) did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Scraper(threading.Thread):
    """GETs ``/metrics`` every ``every`` seconds, as a Prometheus server would."""

    def __init__(self, url: str, every: float) -> None:
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.stopped = threading.Event()
        self.seconds: list[float] = []  # wall time of each scrape

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            t0 = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=10) as resp:
                resp.read()
            self.seconds.append(time.perf_counter() - t0)


def loadgen(args: argparse.Namespace, target: Target) -> list[dict]:
    """One loadgen run against ``target``: one JSON object per concurrency level."""
    cmd = [args.python, str(args.anchors / "loadgen.py"), "--url", target.url, "--model", "mlp"]
    cmd += ["--concurrency", args.concurrency, "--seconds", str(args.seconds)]
    cmd += ["--warmup", str(args.warmup), "--label", target.name]
    if target.proc is not None:
        cmd += ["--server-pid", str(target.proc.pid)]
    if args.binary:
        cmd.append("--binary")
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"loadgen failed against {target.name}:\n{out.stderr}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _cpu_us(r: dict) -> float:
    """Server CPU time per request, µs: less disturbed by other load than throughput is."""
    return float(r.get("server_cpu_pct") or 0) * 1e4 / max(float(r["req_per_s"]), 1e-9)


def table(on: Target, off: Target) -> str:
    """Medians per concurrency level, metrics on vs off.

    ``paired`` is the median over rounds of on/off - 1 within the same round (the two runs of a
    round are back to back, so slow drift of the machine's load cancels out).
    """

    def by_conc(t: Target) -> dict[int, list[dict]]:
        rows: dict[int, list[dict]] = {}
        for r in t.runs:
            rows.setdefault(int(r["concurrency"]), []).append(r)
        return rows

    a, b = by_conc(on), by_conc(off)
    lines = [
        "| conc | runs | infer/s on | infer/s off | on vs off | paired | p50 ms on / off | "
        "p99 ms on / off | srv CPU µs/req on / off | paired | other cpu% on / off | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in sorted(a):

        def med(rows: list[dict], key: str) -> float:
            return statistics.median(float(r.get(key) or 0) for r in rows) if rows else 0.0

        def other(rows: list[dict]) -> float:
            """What the rest of the machine took: machine - client - server, % of a core."""
            if not rows:
                return 0.0
            return statistics.median(
                float(r.get("machine_cpu_pct") or 0)
                - float(r.get("client_cpu_pct") or 0)
                - float(r.get("server_cpu_pct") or 0)
                for r in rows
            )

        ra, rb = a[c], b.get(c, [])
        ia, ib = med(ra, "infer_per_s"), med(rb, "infer_per_s")
        diff = (ia - ib) / ib * 100 if ib else float("nan")
        pairs = list(zip(ra, rb, strict=True))
        paired = statistics.median(x["infer_per_s"] / y["infer_per_s"] - 1 for x, y in pairs)
        ca = statistics.median(_cpu_us(r) for r in ra)
        cb = statistics.median(_cpu_us(r) for r in rb) if rb else float("nan")
        cpu_paired = statistics.median(_cpu_us(x) / _cpu_us(y) - 1 for x, y in pairs)
        errs = sum(int(r.get("errors", 0)) for r in ra + rb)
        lines.append(
            f"| {c} | {len(ra)}+{len(rb)} | {ia:.0f} | {ib:.0f} | {diff:+.1f}% | "
            f"{paired * 100:+.1f}% | "
            f"{med(ra, 'p50_ms'):.2f} / {med(rb, 'p50_ms'):.2f} | "
            f"{med(ra, 'p99_ms'):.2f} / {med(rb, 'p99_ms'):.2f} | "
            f"{ca:.0f} / {cb:.0f} | {cpu_paired * 100:+.1f}% | "
            f"{other(ra):.0f} / {other(rb):.0f} | {errs} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=4, help="on/off pairs, order alternating")
    p.add_argument("--seconds", type=float, default=10, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("-c", "--concurrency", default="1,8", help="comma list, as loadgen's")
    p.add_argument("--binary", action="store_true", help="binary tensor extension requests")
    p.add_argument("--scrape-every", type=float, default=1.0, help="s between scrapes (0: none)")
    p.add_argument("--metrics-interval-ms", type=int, default=2000)
    p.add_argument("--anchors", type=Path, default=ROOT.parent / "shared" / "anchors")
    p.add_argument("--python", default=sys.executable, help="interpreter for loadgen.py")
    p.add_argument("--repo", type=Path, default=ROOT / "examples" / "model_repository")
    p.add_argument("-o", "--output", type=Path, help="also write loadgen's JSON lines here")
    args = p.parse_args(argv)
    if not (args.anchors / "loadgen.py").exists():
        p.error(f"no loadgen.py in {args.anchors} (use --anchors)")

    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"naiad-metrics-bench-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    mport = free_port()
    on = Target(
        "metrics-on",
        ["--metrics-port", str(mport), "--metrics-interval-ms", str(args.metrics_interval_ms)],
        metrics_port=mport,
    )
    off = Target("metrics-off", ["--allow-metrics=false"])
    scraper: Scraper | None = None
    try:
        for t in (on, off):
            t.start(args.repo, workdir)
        if args.scrape_every > 0:
            scraper = Scraper(f"http://127.0.0.1:{mport}/metrics", args.scrape_every)
            scraper.start()
        for r in range(args.rounds):
            order = (on, off) if r % 2 == 0 else (off, on)
            for t in order:
                results = loadgen(args, t)
                t.runs += results
                for res in results:
                    print(
                        f"round {r + 1}/{args.rounds} {t.name:<11} c={res['concurrency']:<3} "
                        f"{res['infer_per_s']:8.0f} infer/s  p50 {res['p50_ms']:.2f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        if scraper is not None:
            scraper.stopped.set()
        for t in (on, off):
            t.stop()
    if args.output:
        with open(args.output, "w") as f:
            for t in (on, off):
                for res in t.runs:
                    f.write(json.dumps(res) + "\n")
    kind = "binary" if args.binary else "json"
    scrapes = scraper.seconds if scraper else []
    print(
        f"mlp, {kind} requests, {args.rounds} rounds x {args.seconds:g} s per level; metrics on: "
        f"CPU polled every {args.metrics_interval_ms} ms, /metrics scraped every "
        f"{args.scrape_every:g} s ({len(scrapes)} scrapes"
        + (f", median {statistics.median(scrapes) * 1000:.2f} ms each)" if scrapes else ")")
    )
    print(table(on, off))
    return 0


if __name__ == "__main__":
    sys.exit(main())
