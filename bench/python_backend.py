"""The same Triton python-backend ``model.py`` files through naiad in both instance modes
(``instance_isolation`` ``process`` and ``thread``), and through tritonserver's python backend when
its anchor is set up (``bash bench/setup.sh``).

Two models: NVIDIA's ``add_sub`` (FP32 [4]) and an identity over a 3x224x224 FP32 image. Load is
the real ``tritonclient.http`` client (binary tensors), ``-c`` concurrent clients each sending
back-to-back requests for ``-d`` seconds; figures are requests/s and the median latency.
Not perf_analyzer: a quick, self-contained comparison (perf_analyzer: bench/compare_servers.py).

    .venv/bin/python bench/python_backend.py [-d 5] [-c 1 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import benchlib
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


def write_repo(repo: Path, mode: str | None) -> None:
    extra = (
        f'parameters {{ key: "instance_isolation" value: {{ string_value: "{mode}" }} }}\n'
        if mode
        else ""
    )
    tm.write(repo, "add_sub", tm.ADD_SUB, tm.add_sub_config("add_sub"), extra)
    tm.write(repo, "image", IDENTITY, IMAGE, extra)


def inputs_for(model: str):
    import tritonclient.http as httpclient

    if model == "add_sub":
        x = np.arange(4, dtype=np.float32)
        pairs = [("INPUT0", x), ("INPUT1", x)]
    else:
        pairs = [("IN", np.random.default_rng(0).random((3, 224, 224), dtype=np.float32))]
    made = []
    for name, array in pairs:
        inp = httpclient.InferInput(name, list(array.shape), "FP32")
        inp.set_data_from_numpy(array, binary_data=True)
        made.append(inp)
    return made


def load(url: str, model: str, clients: int, seconds: float) -> tuple[float, float]:
    """(requests/s, median latency ms) of ``clients`` back-to-back clients."""
    import tritonclient.http as httpclient

    latencies: list[list[float]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)

    def run(i: int) -> None:
        client = httpclient.InferenceServerClient(url)
        inputs = inputs_for(model)
        for _ in range(3):
            client.infer(model, inputs)
        start.wait()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.perf_counter()
            client.infer(model, inputs)
            latencies[i].append(time.perf_counter() - t)
        client.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    began = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    every = [v for per in latencies for v in per]
    return len(every) / elapsed, statistics.median(every) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("-c", "--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--port", type=int, default=18300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="naiad-pyback-bench-"))
    servers = [("naiad process", "process"), ("naiad thread", "thread")]
    if (benchlib.TRITON_VENV / "bin" / "tritonserver").exists():
        servers.append(("triton python", None))
    rows = []
    for label, mode in servers:
        repo = work / (mode or "triton")
        write_repo(repo, mode)
        port = benchlib.free_ports(args.port, 3)
        if mode is None:
            srv = benchlib.start_triton(repo, port, work, ["add_sub", "image"])
        else:
            srv = benchlib.start_naiad(repo, port, work, ["add_sub", "image"], name=label[6:])
        try:
            for model in ("add_sub", "image"):
                for c in args.concurrency:
                    rps, p50 = load(srv.hostport, model, c, args.duration)
                    rows.append([label, model, str(c), f"{rps:.0f}", f"{p50:.2f}"])
                    benchlib.log(rows[-1])
        finally:
            srv.stop()
    print(benchlib.md_table(["server", "model", "clients", "req/s", "p50 ms"], rows))
    print(f"\n{benchlib.machine_info()}; {args.duration:.0f} s per row")


if __name__ == "__main__":
    main()
