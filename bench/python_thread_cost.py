#!/usr/bin/env python3
"""Where a thread-mode Triton python model's CPU goes, beside an ONNX model, without HTTP.

    .venv/bin/python bench/python_thread_cost.py [-n 5000] [-r 3] [-c 1,8]

One naiad server in this process (no HTTP, gRPC or metrics port) serving ``add_sub`` (Triton's
python-backend example, FP32 [4] + [4], ``instance_isolation: "thread"``) and the ONNX
``simple`` (INT32 [1,16] + [1,16]), driven from its event loop; CPU figures are this process's
(every thread), so they do not depend on a client sharing the cores:

- ``Instance.run``: one execution on the instance, called directly (the backend's whole share:
  for add_sub the ``pb_utils`` objects, the model's ``execute``, the output checks);
- ``DataPlane.infer``: a request through validation, the scheduler, the instance's thread and
  back, ``-c`` requests in flight (tasks on the loop), with the thread switches per request;
- ``no hop``: the same, with the instance's work run on the loop where the scheduler hands it
  to the instance thread (``Worker.call_soon`` replaced in this process only): it prices the
  hand-off to the instance thread and back. A measurement, not a mode: naiad never runs model
  code on its event loop.

Rounds alternate between the models; the table shows the median of ``-r`` rounds (min–max).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np
import tritonpy_models as tm
from naiad.dataplane import _serving
from naiad.grpc.config import GrpcConfig
from naiad.inference import InferRequest
from naiad.metrics import MetricsConfig
from naiad.scheduling import worker
from naiad.server import Server, ServerConfig

ROOT = Path(__file__).resolve().parent.parent
THREAD = 'parameters { key: "instance_isolation" value: { string_value: "thread" } }\n'
_A = np.arange(4, dtype=np.float32)
_S = np.arange(16, dtype=np.int32).reshape(1, 16)
REQUESTS = {
    "add_sub": lambda: InferRequest("add_sub", -1, "", {"INPUT0": _A, "INPUT1": _A}),
    "simple": lambda: InferRequest("simple", -1, "", {"INPUT0": _S, "INPUT1": _S}),
}


def switches() -> int:
    """Context switches of every thread of this process so far."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                total += sum(int(ln.split()[1]) for ln in f if "ctxt_switches" in ln)
        except OSError:
            pass
    return total


def inline_call_soon(self, loop, callback, fn, *args):
    """``Worker.call_soon`` without the thread: run ``fn`` here, then the callback."""
    try:
        result, error = fn(*args), None
    except BaseException as exc:
        result, error = None, exc
    if loop is None:
        callback(result, error)
    else:
        loop.call_soon(callback, result, error)


async def measure(server: Server, args) -> list[dict]:
    dp = server.dataplane
    rows: list[dict] = []

    async def one_client(model: str, n: int) -> None:
        make = REQUESTS[model]
        for _ in range(n):
            await dp.infer(make())

    async def drive(model: str, n: int, clients: int) -> None:
        await asyncio.gather(*[one_client(model, n // clients) for _ in range(clients)])

    def run_direct(model: str, n: int) -> None:
        _, _, scheduler = _serving(dp.resolve(model))
        instance = scheduler._idle[0]  # idle: the bench drives nothing else meanwhile
        make = REQUESTS[model]
        for _ in range(n):
            result = instance.run([make()])
        assert not isinstance(result.responses[0], BaseException), result.responses

    for model in REQUESTS:  # warm up
        await drive(model, 500, 1)
        run_direct(model, 500)
    original = worker.Worker.call_soon
    cases = [("Instance.run", 1, False)]
    cases += [("DataPlane.infer", c, False) for c in args.concurrency]
    cases += [("no hop", c, True) for c in args.concurrency]
    for rnd in range(args.rounds):
        for what, clients, inline in cases:
            for model in REQUESTS:
                n = args.n
                worker.Worker.call_soon = inline_call_soon if inline else original  # type: ignore[method-assign]
                try:
                    s0, c0, w0 = switches(), time.process_time(), time.perf_counter()
                    if what == "Instance.run":
                        run_direct(model, n)
                    else:
                        await drive(model, n, clients)
                    c1, w1, s1 = time.process_time(), time.perf_counter(), switches()
                finally:
                    worker.Worker.call_soon = original  # type: ignore[method-assign]
                rows.append(
                    {
                        "what": what,
                        "clients": clients,
                        "model": model,
                        "cpu_us": (c1 - c0) / n * 1e6,
                        "wall_us": (w1 - w0) / n * 1e6,
                        "switches": (s1 - s0) / n,
                        "round": rnd,
                    }
                )
    return rows


def table(rows: list[dict]) -> str:
    keys = []
    for r in rows:
        key = (r["what"], r["clients"], r["model"])
        if key not in keys:
            keys.append(key)
    head = (
        "| what | clients | model | CPU µs/request | min–max | wall µs/request | switches/request |"
    )
    lines = [head, "|---|---:|---|---:|---|---:|---:|"]
    for what, clients, model in keys:
        mine = [r for r in rows if (r["what"], r["clients"], r["model"]) == (what, clients, model)]
        cpu = [r["cpu_us"] for r in mine]
        wall = statistics.median(r["wall_us"] for r in mine)
        sw = statistics.median(r["switches"] for r in mine)
        lines.append(
            f"| {what} | {clients if what != 'Instance.run' else ''} | {model} | "
            f"{statistics.median(cpu):.1f} | {min(cpu):.1f}–{max(cpu):.1f} | {wall:.1f} | "
            f"{sw:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-n", type=int, default=5000, help="requests per row and round")
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("-c", default="1,8", help="requests in flight (comma-separated)")
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.c.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        tm.write(repo, "add_sub", tm.ADD_SUB, tm.add_sub_config("add_sub"), THREAD)
        shutil.copytree(ROOT / "examples" / "model_repository" / "simple", repo / "simple")
        config = ServerConfig(
            model_repositories=[repo],
            allow_http=False,
            grpc=GrpcConfig(allow_grpc=False),
            metrics=MetricsConfig(allow_metrics=False),
        )

        async def run() -> list[dict]:
            server = Server(config)
            await server.start()
            try:
                return await measure(server, args)
            finally:
                await server.stop()

        try:
            import uvloop  # the server's loop when installed

            rows = uvloop.run(run())
        except ImportError:
            rows = asyncio.run(run())
    print(
        f"# python_thread_cost: {args.n} requests per row, {args.rounds} rounds, load average "
        f"{os.getloadavg()[0]:.2f} at the end"
    )
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
