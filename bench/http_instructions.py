#!/usr/bin/env python3
"""Instructions per HTTP request under callgrind: a figure no load on the machine moves.

    python3 bench/http_instructions.py [--before ../wt-before] [-n 2000] [--runs simple:1,mlp:8]

For this checkout (and ``--before``'s, with PYTHONPATH into its ``core`` and plugins, as
before_after.py runs it), one naiad server under ``valgrind --tool=callgrind
--instr-atstart=no`` on the ONNX repository (anchors/models/make_repo.py --kind onnx, models
``simple`` and ``mlp``). For each ``model:connections`` run: 300 requests to warm up, then
instrumentation on, ``-n`` binary inference requests (the same header perf_analyzer sends:
1×16 inputs, binary outputs) from a raw keep-alive client over that many connections, each
sending its next request when its answer is in, instrumentation off, and a dump. The figure is
user-space instructions of every thread of the server (interpreter, uvloop, numpy, ONNX
Runtime, libc; not the kernel) per request. Slow (the server runs ~50× slower): ~2 min a
server. Needs valgrind (``callgrind_control`` beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import benchlib as B
from before_after import before_env

MODELS = ["simple", "mlp"]


def request_bytes(model: str, port: int) -> bytes:
    """One binary inference request as perf_analyzer sends it for ``model``."""
    if model == "simple":
        inputs, outputs = [("INPUT0", "INT32"), ("INPUT1", "INT32")], ["OUTPUT0", "OUTPUT1"]
    else:
        inputs, outputs = [("INPUT0" if model == "identity_fp32" else "input", "FP32")], []
    head: dict = {
        "inputs": [
            {"name": n, "shape": [1, 16], "datatype": d, "parameters": {"binary_data_size": 64}}
            for n, d in inputs
        ]
    }
    if outputs:
        head["outputs"] = [{"name": o, "parameters": {"binary_data": True}} for o in outputs]
    else:
        head["parameters"] = {"binary_data_output": True}
    header = json.dumps(head).encode()
    body = header + b"\x01\x00\x00\x00" * 16 * len(inputs)
    return (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def drive(port: int, model: str, n: int, conc: int) -> float:
    """``n`` requests over ``conc`` keep-alive connections; the seconds they took."""
    req = request_bytes(model, port)
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(conc):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, [b""])
    sent = done = 0
    t0 = time.perf_counter()
    for s in socks:
        if sent < n:
            s.sendall(req)
            sent += 1
    while done < n:
        for key, _ in sel.select():
            s = key.fileobj
            assert isinstance(s, socket.socket)
            chunk = s.recv(1 << 16)
            if not chunk:
                raise RuntimeError("the server closed a connection")
            buf = key.data[0] + chunk
            while (end := buf.find(b"\r\n\r\n")) >= 0:
                head = buf[:end].decode("latin-1")
                if not head.startswith("HTTP/1.1 200"):
                    raise RuntimeError(f"unexpected answer: {head}")
                length = next(
                    int(line.split(":", 1)[1])
                    for line in head.split("\r\n")
                    if line.lower().startswith("content-length:")
                )
                if len(buf) < end + 4 + length:
                    break
                buf = buf[end + 4 + length :]
                done += 1
                if sent < n:
                    s.sendall(req)
                    sent += 1
            key.data[0] = buf
    took = time.perf_counter() - t0
    for s in socks:
        s.close()
    return took


def totals(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("totals:") or line.startswith("summary:"):
            value = int(line.split()[1])
            if value:
                return value
    raise RuntimeError(f"no totals in {path}")


def measure(
    name: str, env: dict[str, str], repo: Path, out: Path, port: int, runs, n: int
) -> dict[str, float]:
    stem = out / f"cg-{name}"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={stem}.%p",
        str(B.NAIAD_VENV / "bin" / "python"),
        "-m",
        "naiad",
        "serve",
        "--model-repository",
        str(repo),
        "--http-address",
        "127.0.0.1",
        "--http-port",
        str(port),
        "--grpc-port",
        str(port + 1),
        "--metrics-port",
        str(port + 2),
        "--exit-on-error=false",
    ]
    logf = open(out / f"{name}.log", "wb")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=dict(os.environ, **env))
    result: dict[str, float] = {}
    try:
        srv = B.Server(
            name, proc.pid, f"http://127.0.0.1:{port}", out / f"{name}.log", proc, "naiad"
        )
        B.wait_ready(srv, MODELS, timeout=600)
        ctl = ["callgrind_control"]
        for model, conc in runs:
            drive(port, model, 300, conc)
            subprocess.run([*ctl, "-i", "on", str(proc.pid)], check=True, capture_output=True)
            took = drive(port, model, n, conc)
            subprocess.run([*ctl, "-i", "off", str(proc.pid)], check=True, capture_output=True)
            before = set(out.glob(f"cg-{name}.{proc.pid}.*"))
            subprocess.run([*ctl, "-d", str(proc.pid)], check=True, capture_output=True)
            subprocess.run([*ctl, "-z", str(proc.pid)], check=True, capture_output=True)
            (dump,) = set(out.glob(f"cg-{name}.{proc.pid}.*")) - before
            per = totals(dump) / n
            result[f"{model}:{conc}"] = per
            B.log(f"{name:7s} {model:8s} c={conc} {per:9.0f} instructions/request ({took:.1f} s)")
    finally:
        proc.terminate()
        proc.wait(60)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--before", help="checkout of an earlier commit")
    ap.add_argument("-n", type=int, default=2000, help="requests counted per run")
    ap.add_argument("--runs", default="simple:1,simple:8,mlp:8", help="model:connections,...")
    ap.add_argument("--port", type=int, default=27700)
    ap.add_argument("--out")
    a = ap.parse_args()
    runs = [(r.split(":")[0], int(r.split(":")[1])) for r in a.runs.split(",")]
    out = B.new_outdir("http-instructions", a.out)
    B.log(f"results in {out}")
    full = out / "repo-onnx"
    make = [str(B.TRITON_VENV / "bin" / "python"), str(B.ANCHORS / "models" / "make_repo.py")]
    subprocess.run([*make, str(full), "--kind", "onnx"], check=True, stdout=subprocess.DEVNULL)
    repo = out / "repo"
    repo.mkdir()
    for model in MODELS:
        shutil.copytree(full / model, repo / model)
    servers: dict[str, dict[str, str]] = {}
    if a.before:
        servers["before"] = before_env(Path(a.before).resolve())
    servers["naiad"] = {}
    figures = {}
    for i, (name, env) in enumerate(servers.items()):
        figures[name] = measure(name, env, repo, out, a.port + 10 * i, runs, a.n)
    (out / "figures.json").write_text(json.dumps(figures, indent=1))
    head = ["run", *figures]
    if "before" in figures:
        head.append("naiad ÷ before")
    rows = []
    for model, conc in runs:
        key = f"{model}:{conc}"
        row = [f"{model} c={conc}", *(f"{figures[s][key]:.0f}" for s in figures)]
        if "before" in figures:
            row.append(f"{figures['naiad'][key] / figures['before'][key]:.3f}")
        rows.append(row)
    text = (
        f"# http_instructions {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        f"rev {B.naiad_rev()}; user-space instructions per request (callgrind, every thread), "
        f"{a.n} requests per run\n\n" + B.md_table(head, rows) + "\n"
    )
    (out / "tables.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
