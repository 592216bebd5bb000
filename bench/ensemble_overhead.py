#!/usr/bin/env python3
"""Ensemble overhead: ``preprocess_classifier`` (one request) against the same two steps called
back to back from the client (image bytes -> preprocess, FP32 [3,224,224] back and forth ->
classifier), at concurrency 1 and 8, each thread with its own tritonclient.http client.

    .venv/bin/python bench/ensemble_overhead.py [--seconds 10] [--batch 1]

Needs the naiad venv (naiad, naiad-backend-onnx, naiad-custom-example, tritonclient, Pillow).
Writes the example repository (examples/make_ensemble.py) into a temporary folder, starts
``naiad serve`` on free ports, prints a markdown table, stops the server.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_ensemble():
    spec = importlib.util.spec_from_file_location(
        "make_ensemble", ROOT / "examples" / "make_ensemble.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _image(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _run(url: str, concurrency: int, seconds: float, call) -> float:
    """Requests per second of ``call(client)`` from ``concurrency`` threads."""
    import tritonclient.http as httpclient

    stop = time.monotonic() + seconds
    counts = [0] * concurrency

    def worker(i: int) -> None:
        client = httpclient.InferenceServerClient(url, network_timeout=120)
        try:
            call(client)  # warm-up, not counted
            while time.monotonic() < stop:
                call(client)
                counts[i] += 1
        finally:
            client.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - started)


def main() -> None:
    import tritonclient.http as httpclient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    me = _make_ensemble()
    blobs = np.array([_image(i) for i in range(args.batch)], dtype=object).reshape(-1, 1)

    def image_input():
        inp = httpclient.InferInput("INPUT", list(blobs.shape), "BYTES")
        inp.set_data_from_numpy(blobs)
        return [inp]

    def ensemble(client) -> None:
        client.infer(me.ENSEMBLE, image_input())

    def two_calls(client) -> None:
        pre = client.infer(me.PREPROCESS, image_input()).as_numpy("OUTPUT")
        data = httpclient.InferInput("data", list(pre.shape), "FP32")
        data.set_data_from_numpy(pre)
        client.infer(me.CLASSIFIER, [data])

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        me.write_all(repo)
        port = _free_port()
        log = open(Path(tmp) / "naiad.log", "wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "naiad",
                "serve",
                "--model-repository",
                str(repo),
                "--http-address",
                "127.0.0.1",
                "--http-port",
                str(port),
                "--metrics-port",
                str(_free_port()),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"127.0.0.1:{port}"
        try:
            client = httpclient.InferenceServerClient(url)
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.is_server_ready():
                        break
                except Exception:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit((Path(tmp) / "naiad.log").read_text())
                time.sleep(0.1)
            client.close()
            print(f"batch {args.batch}, {args.seconds:g} s per point\n")
            print("| concurrency | ensemble infer/s | two calls infer/s | ratio |")
            print("|---|---|---|---|")
            for concurrency in (1, 8):
                e = _run(url, concurrency, args.seconds, ensemble)
                t = _run(url, concurrency, args.seconds, two_calls)
                print(f"| {concurrency} | {e:.1f} | {t:.1f} | {e / t:.2f}x |")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


if __name__ == "__main__":
    main()
