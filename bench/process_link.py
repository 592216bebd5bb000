"""The process-mode hop alone, without HTTP: an :class:`naiad.scheduling.Instance` of the
add_sub python model in its own process, driven from an event loop through the fast path
(``Instance.submit``), executions back to back.

Prints the round trip per execution and the CPU each side spends on it (the loop thread's own
CPU, the child's from ``/proc``): the figures to decide a change of the link by, since they do
not depend on an HTTP client sharing the cores.

    python bench/process_link.py [-n 5000] [-r 3] [--profile loop|none]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np
import tritonpy_models as tm
from naiad.backend import InstanceContext
from naiad.config import parse_model_config
from naiad.inference import InferRequest
from naiad.isolation import make_backend
from naiad.python_backend import PythonFileBackend
from naiad.scheduling.instance import Instance
from naiad.signature import Signature


def _child_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(instance: Instance, n: int) -> None:
    loop = asyncio.get_running_loop()
    a = np.arange(4, dtype=np.float32)
    for _ in range(n):
        request = InferRequest("add_sub", 1, "", {"INPUT0": a, "INPUT1": a})
        future = loop.create_future()
        started = instance.submit([request], lambda r, e, f=future: f.set_result((r, e)))
        assert started, "the fast path refused the execution"
        result, error = await future
        assert error is None and not isinstance(result.responses[0], BaseException), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=5000, help="executions per round")
    parser.add_argument("-r", type=int, default=3, help="rounds")
    parser.add_argument("--profile", action="store_true", help="cProfile the loop's last round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        folder = tm.write(repo, "add_sub", tm.ADD_SUB, tm.add_sub_config("add_sub"))
        config = parse_model_config((folder / "config.pbtxt").read_text(), model_name="add_sub")
        ctx = InstanceContext("add_sub_0_0", "KIND_CPU")
        backend = make_backend(PythonFileBackend, "process", config, folder, folder / "1", ctx)
        instance = Instance(backend, Signature.from_config(config))
        instance.load()
        pid = backend.process.pid  # type: ignore[attr-defined]
        try:  # the server's loop when it is installed
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        loop.run_until_complete(_drive(instance, 200))  # warm up
        for i in range(args.r):
            c0, t0, w0 = _child_cpu(pid), time.thread_time(), time.perf_counter()
            if args.profile and i == args.r - 1:
                import cProfile
                import pstats

                prof = cProfile.Profile()
                prof.enable()
                loop.run_until_complete(_drive(instance, args.n))
                prof.disable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(18)
            else:
                loop.run_until_complete(_drive(instance, args.n))
            w, t, c = time.perf_counter() - w0, time.thread_time() - t0, _child_cpu(pid) - c0
            us = 1e6 / args.n
            print(
                f"round {i + 1}: {w * us:6.1f} us/round trip  loop cpu {t * us:5.1f} us  "
                f"child cpu {c * us:5.1f} us  load {os.getloadavg()[0]:.2f}"
            )
        instance.release()
        loop.close()


if __name__ == "__main__":
    main()
