"""What an HTTP request costs before any model runs: the floor under naiad's figures.

Four servers answer the same binary V2 request for ``identity_fp32`` (1×16 FP32), one after
the other, driven by the anchors' ``loadgen.py`` at concurrency 1 and 8:

- ``raw-protocol``: an asyncio protocol (uvloop) that parses the request itself and echoes the
  tensor — the least a Python server can do per request;
- ``bare-aiohttp``: the same echo as a plain aiohttp handler;
- ``naiad``: naiad serving the anchors' ONNX ``identity_fp32`` (its fast front, the default);
- ``naiad-aiohttp``: the same with ``--http-fast-path=false`` (aiohttp answers everything).

The first two run no model at all; the gap between them is aiohttp's own cost per request,
and the reason naiad answers its hot requests on its own front (docs/performance.md).

    python3 bench/http_floor.py            # ~1.5 min; needs bash bench/setup.sh (loadgen venv)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import benchlib as B

_ECHO = r"""
import asyncio, json, sys
import numpy as np, uvloop
KIND, PORT = sys.argv[1], int(sys.argv[2])
OUT = json.dumps({"model_name": "identity_fp32", "outputs": [{"name": "output",
    "datatype": "FP32", "shape": [1, 16], "parameters": {"binary_data_size": 64}}]}).encode()

def answer(body, header_length):
    json.loads(body[:header_length])
    return OUT + np.frombuffer(body[header_length:], dtype=np.float32).tobytes()

class Raw(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf = t, b""
    def data_received(self, data):
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip()
                       for k, _, v in (ln.partition(":") for ln in lines[1:])}
            n = int(headers.get("content-length", 0))
            if len(self.buf) < end + 4 + n:
                return
            body, self.buf = self.buf[end + 4:end + 4 + n], self.buf[end + 4 + n:]
            payload = answer(body, int(headers["inference-header-content-length"]))
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n"
                         % (len(OUT), len(payload)) + payload)

async def main():
    loop = asyncio.get_running_loop()
    if KIND == "raw":
        await loop.create_server(Raw, "127.0.0.1", PORT)
    else:
        from aiohttp import web
        async def infer(request):
            body = await request.read()
            hl = int(request.headers["Inference-Header-Content-Length"])
            return web.Response(body=answer(body, hl), content_type="application/octet-stream",
                                headers={"Inference-Header-Content-Length": str(len(OUT))})
        async def ready(request):
            return web.Response()
        app = web.Application()
        app.router.add_post("/v2/models/{model}/infer", infer)
        app.router.add_get("/v2/health/ready", ready)
        app.router.add_get("/v2/models/{model}/ready", ready)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", PORT).start()
    print("ready", flush=True)
    await asyncio.Event().wait()

uvloop.run(main())
"""


def start_echo(kind: str, port: int, workdir: Path) -> B.Server:
    """One of the two model-less echo servers (ready once it prints "ready")."""
    script = workdir / "echo_server.py"
    script.write_text(_ECHO)
    logp = workdir / f"{kind}.log"
    f = open(logp, "wb")
    p = subprocess.Popen(
        [str(B.NAIAD_VENV / "bin" / "python"), str(script), kind, str(port)],
        stdout=f,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    srv = B.Server(f"{kind}-echo", p.pid, f"http://127.0.0.1:{port}", logp, p, "echo")
    end = time.monotonic() + 30
    while b"ready" not in logp.read_bytes():
        if not srv.alive() or time.monotonic() > end:
            raise RuntimeError(f"{srv.name} did not start: {logp.read_text(errors='replace')}")
        time.sleep(0.1)
    return srv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--concurrency", default="1,8")
    ap.add_argument("-s", "--seconds", type=float, default=5)
    ap.add_argument("-w", "--warmup", type=float, default=1)
    ap.add_argument("--port", type=int, default=28000)
    args = ap.parse_args()
    B.need(B.LOADGEN_PY, "loadgen venv (bash bench/setup.sh)")
    work = B.tempdir("naiad-http-floor-")
    repo = work / "repo"
    subprocess.run(
        [
            str(B.NAIAD_VENV / "bin" / "python"),
            str(B.ANCHORS / "models" / "make_repo.py"),
            str(repo),
            "--kind",
            "onnx",
        ],
        check=True,
        capture_output=True,
    )
    port = B.free_ports(args.port, 3)
    rows = []
    targets = [
        ("raw-protocol", lambda: start_echo("raw", port, work)),
        ("bare-aiohttp", lambda: start_echo("aiohttp", port, work)),
        ("naiad", lambda: B.start_naiad(repo, port, work, ["identity_fp32"])),
        (
            "naiad-aiohttp",
            lambda: B.start_naiad(
                repo, port, work, ["identity_fp32"], "naiad-aiohttp", ["--http-fast-path=false"]
            ),
        ),
    ]
    for label, start in targets:
        srv = start()
        try:
            for conc in (int(c) for c in args.concurrency.split(",")):
                row = B.run_loadgen(
                    srv,
                    "identity_fp32",
                    conc,
                    args.seconds,
                    args.warmup,
                    True,
                    label,
                    "identity_fp32",
                    check=False,
                )
                rows.append(row)
                B.log_row(row)
        finally:
            srv.stop()
    head = [
        "server",
        "conc",
        "infer/s",
        "p50 ms",
        "p99 ms",
        "srv cpu%",
        "srv CPU µs/req",
        "cli cpu%",
    ]
    out = []
    for r in rows:
        if r.get("failed"):
            out.append([r["label"], str(r["concurrency"]), "failed", "", "", "", "", ""])
            continue
        rate = r["infer_per_s"]
        out.append(
            [
                r["label"],
                str(r["concurrency"]),
                B.fmt(rate),
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                B.fmt(r.get("server_cpu_pct")),
                B.fmt(r["server_cpu_pct"] * 1e4 / rate) if rate else "",
                B.fmt(r.get("client_cpu_pct")),
            ]
        )
    print(B.md_table(head, out, left=1))
    print(f"\n{B.machine_info()}; naiad {B.naiad_rev()}")


if __name__ == "__main__":
    sys.exit(main())
