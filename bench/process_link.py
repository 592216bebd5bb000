"""The process-mode hop alone, without HTTP: an :class:`naiad.scheduling.Instance` of the
add_sub python model in its own process, driven from an event loop through the fast path
(``Instance.submit``), executions back to back.

Prints the round trip per execution, the CPU each side spends on it (the loop thread's own
CPU, the child's from ``/proc``) and how often the child was switched out per execution (its
threads' voluntary and involuntary context switches: a sleep, a preemption by the woken loop;
each is a switch to pay, whatever the load): the
figures to decide a change of the link by, since they do not depend on an HTTP client sharing
the cores. ``--size 65536`` sends two 256 KiB tensors each way (through shared memory; two
inputs over 1 MiB in all would take the instance thread instead); ``--model image`` runs
``bench/python_backend.py``'s identity over a 3x224x224 FP32 image instead (602 KB each way).
``-c 8`` keeps 8 executions in flight through the default scheduler (as the server does for 8
clients; the figures are then per execution), instead of calling ``Instance.submit`` one
execution after the other.
Compare with another checkout by running it with ``PYTHONPATH=<checkout>/core``.

    python bench/process_link.py [-n 5000] [-r 3] [--size 4] [-c 1] [--model add_sub] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np
import tritonpy_models as tm
from naiad.backend import InstanceContext
from naiad.config import parse_model_config
from naiad.inference import InferRequest
from naiad.isolation import make_backend
from naiad.python_backend import PythonFileBackend
from naiad.scheduling.default import DefaultScheduler
from naiad.scheduling.instance import Instance
from naiad.signature import Signature
from naiad.stats import ModelStats
from python_backend import IDENTITY, IMAGE  # the image model python_backend.py serves


def _child_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _switches(pid: int) -> np.ndarray:
    """Voluntary and involuntary context switches of every thread of ``pid``."""
    total = np.zeros(2, dtype=np.int64)
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        for line in status.read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                total[0] += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                total[1] += int(line.split()[1])
    return total


def _inputs(model: str, size: int) -> dict[str, np.ndarray]:
    if model == "image":
        return {"IN": np.random.default_rng(0).random((3, 224, 224), dtype=np.float32)}
    a = np.arange(size, dtype=np.float32)
    return {"INPUT0": a, "INPUT1": a}


async def _drive(instance: Instance, n: int, model: str, inputs: dict) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(n):
        request = InferRequest(model, 1, "", inputs)
        future = loop.create_future()
        started = instance.submit([request], lambda r, e, f=future: f.set_result((r, e)))
        assert started, "the fast path refused the execution"
        result, error = await future
        assert error is None and not isinstance(result.responses[0], BaseException), result


async def _drive_scheduled(
    scheduler: DefaultScheduler, n: int, clients: int, model: str, inputs: dict
) -> None:
    """``clients`` tasks sending requests back to back through the default scheduler."""

    async def client(count: int) -> None:
        for _ in range(count):
            await scheduler.infer(InferRequest(model, 1, "", inputs))

    await asyncio.gather(*(client(n // clients) for _ in range(clients)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=5000, help="executions per round")
    parser.add_argument("-r", type=int, default=3, help="rounds")
    parser.add_argument("--size", type=int, default=4, help="elements of each FP32 input")
    parser.add_argument("-c", type=int, default=1, help="executions in flight (scheduler)")
    parser.add_argument("--model", choices=("add_sub", "image"), default="add_sub")
    parser.add_argument("--profile", action="store_true", help="cProfile the loop's last round")
    args = parser.parse_args()
    model = args.model
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        if model == "image":
            folder = tm.write(repo, model, IDENTITY, IMAGE)
        else:
            config_text = tm.add_sub_config(model).replace("[ 4 ]", f"[ {args.size} ]")
            folder = tm.write(repo, model, tm.ADD_SUB, config_text)
        config = parse_model_config((folder / "config.pbtxt").read_text(), model_name=model)
        ctx = InstanceContext(f"{model}_0_0", "KIND_CPU")
        backend = make_backend(PythonFileBackend, "process", config, folder, folder / "1", ctx)
        instance = Instance(backend, Signature.from_config(config))
        instance.load()
        inputs = _inputs(model, args.size)
        scheduler = DefaultScheduler([instance], ModelStats())

        def drive(n: int) -> Any:
            if args.c > 1:
                return _drive_scheduled(scheduler, n, args.c, model, inputs)
            return _drive(instance, n, model, inputs)

        pid = backend.process.pid  # type: ignore[attr-defined]
        try:  # the server's loop when it is installed
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        loop.run_until_complete(drive(200))  # warm up
        for i in range(args.r):
            s0, c0 = _switches(pid), _child_cpu(pid)
            t0, w0 = time.thread_time(), time.perf_counter()
            if args.profile and i == args.r - 1:
                import cProfile
                import pstats

                prof = cProfile.Profile()
                prof.enable()
                loop.run_until_complete(drive(args.n))
                prof.disable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(18)
            else:
                loop.run_until_complete(drive(args.n))
            w, t, c = time.perf_counter() - w0, time.thread_time() - t0, _child_cpu(pid) - c0
            slept, preempted = (_switches(pid) - s0) / args.n
            us = 1e6 / args.n
            print(
                f"round {i + 1}: {w * us:6.1f} us/round trip  loop cpu {t * us:5.1f} us  "
                f"child cpu {c * us:5.1f} us  child switches {slept:.2f} slept + "
                f"{preempted:.2f} preempted  "
                f"load {os.getloadavg()[0]:.2f}"
            )
        instance.release()
        loop.close()


if __name__ == "__main__":
    main()
