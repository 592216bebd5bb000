#!/usr/bin/env python3
"""What one large JSON BYTES request costs naiad in memory.

    python3 bench/json_bytes_memory.py [-n 1000000,2000000,5000000] [--onnx] [--numeric]
        [--pythonpath P]

Starts naiad over a repository with ``echo`` (a ``model.py`` that returns its BYTES input: no
framework copies, so what is measured is naiad's own cost) and, with ``--onnx``, the examples'
ONNX ``simple_identity``; sends one JSON request of N 8-character strings to each, and prints the
server's peak (``VmHWM`` minus ``VmRSS`` before the request), its ``VmRSS`` 3 s later, the status
and the time; meanwhile a thread calls ``tiny`` (another echo) with a 1-string request in a
loop, and the slowest, the 99th percentile and the median of those calls are printed too. A
fresh server per row, so each peak is that request's own. With ``--numeric`` the request is
N FP32 numbers (``1.2345678``, 10 bytes each) to ``echo_fp32``, a ``model.py`` returning them.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import sys
import threading
import time

import benchlib as B

ECHO_CONFIG = (
    'backend: "python"\n'
    'input [{ name: "INPUT0" data_type: TYPE_STRING dims: [ -1, -1 ] }]\n'
    'output [{ name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1, -1 ] }]\n'
)
ECHO_PY = (
    "import naiad\n\n\nclass Echo(naiad.CustomInstance):\n"
    "    def execute(self, inputs, outputs):\n"
    "        return {'OUTPUT0': inputs['INPUT0']}\n"
)


FP32_CONFIG = ECHO_CONFIG.replace("TYPE_STRING", "TYPE_FP32")


def _status_mib(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _body(n: int) -> bytes:
    head = b'{"inputs": [{"name": "INPUT0", "shape": [1, %d], "datatype": "BYTES", "data": [' % n
    return head + b'"abcdefgh", ' * (n - 1) + b'"abcdefgh"]}]}'


def _floats(n: int) -> bytes:
    head = b'{"inputs": [{"name": "INPUT0", "shape": [1, %d], "datatype": "FP32", "data": [' % n
    return head + b"1.2345678, " * (n - 1) + b"1.2345678]}]}"


def _probe(port: int, done: threading.Event, took: list[float]) -> None:
    """Call ``tiny`` in a loop until ``done``; the duration of each call goes to ``took``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = _body(1)
    while not done.is_set():
        t0 = time.monotonic()
        conn.request("POST", "/v2/models/tiny/infer", body)
        conn.getresponse().read()
        took.append(time.monotonic() - t0)
    conn.close()


def _tiny(took: list[float]) -> str:
    """The probe's calls: slowest, 99th percentile and median, in ms, and how many."""
    if not took:
        return "-"
    took = sorted(took)
    p99 = took[min(len(took) - 1, int(len(took) * 0.99))]
    return (
        f"{took[-1] * 1e3:.0f} / {p99 * 1e3:.0f} / {took[len(took) // 2] * 1e3:.1f} ({len(took)})"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("-n", default="1000000,2000000,5000000")
    ap.add_argument("--onnx", action="store_true", help="also the ONNX simple_identity")
    ap.add_argument("--numeric", action="store_true", help="FP32 numbers to echo_fp32 instead")
    ap.add_argument("--port", type=int, default=28200)
    ap.add_argument("--out")
    ap.add_argument("--pythonpath", help="run naiad from another checkout's core/ and plugins")
    a = ap.parse_args()
    out = B.new_outdir("json-bytes-memory", a.out)
    repo = out / "repo"
    (repo / "echo" / "1").mkdir(parents=True, exist_ok=True)
    (repo / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    (repo / "echo" / "1" / "model.py").write_text(ECHO_PY)
    (repo / "tiny" / "1").mkdir(parents=True, exist_ok=True)
    (repo / "tiny" / "config.pbtxt").write_text(ECHO_CONFIG)
    (repo / "tiny" / "1" / "model.py").write_text(ECHO_PY)
    (repo / "echo_fp32" / "1").mkdir(parents=True, exist_ok=True)
    (repo / "echo_fp32" / "config.pbtxt").write_text(FP32_CONFIG)
    (repo / "echo_fp32" / "1" / "model.py").write_text(ECHO_PY)
    models = ["echo_fp32"] if a.numeric else ["echo"]
    if a.onnx:
        spec = importlib.util.spec_from_file_location("mm", B.ROOT / "examples" / "make_models.py")
        mm = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mm)
        mm.write_all(repo)
        models.append("simple_identity")
    rows = []
    with B.Servers() as S:
        for model in models:
            for n in (int(x) for x in a.n.split(",")):
                port = B.free_ports(a.port, 10)
                name = f"naiad-{model}-{n}"
                env = {"PYTHONPATH": a.pythonpath} if a.pythonpath else None
                srv = S.add(B.start_naiad(repo, port, out, [model, "tiny"], name=name, env=env))
                body = _floats(n) if model == "echo_fp32" else _body(n)
                base = _status_mib(srv.pid, "VmRSS")
                done = threading.Event()
                small: list[float] = []
                probe = threading.Thread(target=_probe, args=(port, done, small))
                probe.start()
                t0 = time.monotonic()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                conn.request("POST", f"/v2/models/{model}/infer", body)
                status = conn.getresponse()
                status.read()
                took = time.monotonic() - t0
                done.set()
                probe.join()
                peak = _status_mib(srv.pid, "VmHWM") - base
                time.sleep(3)
                after = _status_mib(srv.pid, "VmRSS") - base
                mib = len(body) / 2**20
                rows.append(
                    [
                        model,
                        f"{n:,}",
                        f"{mib:.1f}",
                        str(status.status),
                        f"+{peak:.0f} ({peak / mib:.1f}x)",
                        f"{after:+.0f}",
                        f"{took:.2f}",
                        _tiny(small),
                    ]
                )
                B.log("  " + " | ".join(rows[-1]))
                S.all.remove(srv)
                srv.stop()
    head = ["model", "elements", "body MiB", "status", "peak MiB", "RSS after MiB", "s"]
    head.append("tiny call ms: slowest / p99 / median (calls)")
    text = (
        f"# JSON BYTES memory {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        f"machine: {B.machine_info()}\n\n" + B.md_table(head, rows) + "\n"
    )
    (out / "tables.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
