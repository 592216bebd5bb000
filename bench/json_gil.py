#!/usr/bin/env python3
"""How long parsing one large JSON request holds the GIL, by kind of body (in-process).

    python3 bench/json_gil.py [-r 3] [--mib 23]

For each kind of body (valid or malformed, BYTES or FP32 data, a repeated key, deep nesting,
a body that is mostly not large arrays), ``naiad.http.codec.parse_infer_request`` runs while a
thread that sleeps 1 ms in a loop records its longest wait: what another request (the event
loop) would wait at worst (the request is freed after the ticker stops: freeing millions of
objects is a long call of its own, whatever parsed them). Prints the best and worst of ``-r``
rounds, the parse's time and its outcome. Run it with ``PYTHONPATH=<another checkout>/core``
to compare two versions.
"""

from __future__ import annotations

import argparse
import gc
import threading
import time

import orjson
from naiad.errors import NaiadError
from naiad.http import codec


def _input(data: bytes, datatype: str, count: int, name: str = "x") -> bytes:
    head = b'{"name": "%s", "datatype": "%s", "shape": [%d], "data": ' % (
        name.encode(),
        datatype.encode(),
        count,
    )
    return head + data + b"}"


def bodies(mib: float) -> dict[str, bytes]:
    n = int(mib * 2**20 / 11)  # 11 bytes an 8-character string
    strings = b"[" + b'"abcdefgh", ' * (n - 1) + b'"abcdefgh"]'
    m = int(mib * 2**20 / 10)
    floats = b"[" + b"1.2345678, " * (m - 1) + b"1.2345678]"
    half = strings.index(b", ", len(strings) // 2) + 2
    broken = strings[:half] + b"x" + strings[half:]
    k = int(mib * 2**20 / 40)
    small = b"[" + b", ".join([b'{"a": [1, 2, 3], "b": "abcdefgh"}'] * k) + b"]"
    keys = b", ".join(b'"k%d": %d' % (i, i) for i in range(int(mib * 2**20 / 16)))
    deep = 600
    return {
        "BYTES, valid": b'{"inputs": [%s]}' % _input(strings, "BYTES", n),
        "BYTES, error mid-array": b'{"inputs": [%s]}' % _input(broken, "BYTES", n),
        "BYTES, truncated": (b'{"inputs": [%s]}' % _input(strings, "BYTES", n))[:-5],
        "FP32, valid": b'{"inputs": [%s]}' % _input(floats, "FP32", m),
        "FP32, error at the end": b'{"inputs": [%s]}' % _input(floats[:-2] + b",]", "FP32", m),
        "BYTES, repeated key": b'{"inputs": [%s], "inputs": [%s]}'
        % (_input(strings, "BYTES", n), _input(b'["a"]', "BYTES", 1)),
        f"BYTES, nested {deep} deep": b'{"inputs": [%s], "p": %s}'
        % (_input(strings, "BYTES", n), b"[" * deep + b"]" * deep),
        "a large array of small objects": b'{"inputs": [%s], "parameters": {"p": %s}}'
        % (_input(b'["a"]', "BYTES", 1), small),
        "a large object (no large array)": b'{"inputs": [%s], "parameters": {%s}}'
        % (_input(b'["a"]', "BYTES", 1), keys),
    }


def measure(body: bytes) -> tuple[float, float, str]:
    """(longest wait of the 1 ms ticker, parse seconds, outcome)."""
    done = threading.Event()
    worst = [0.0]

    def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            worst[0] = max(worst[0], now - last)
            last = now

    ticker = threading.Thread(target=tick)
    ticker.start()
    time.sleep(0.05)
    worst[0] = 0.0
    t0 = time.perf_counter()
    result = None
    try:
        result = codec.parse_infer_request(body, None, "m", 1, max_decoded=1 << 32)
        outcome = "ok"
    except NaiadError as exc:
        outcome = exc.message[:90]
    took = time.perf_counter() - t0
    time.sleep(0.01)
    done.set()
    ticker.join()
    del result  # freeing millions of objects is one long call too, but not the parse's
    return worst[0], took, outcome


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("--mib", type=float, default=23)
    ap.add_argument("--no-gc", action="store_true", help="with the cyclic GC off")
    a = ap.parse_args()
    if a.no_gc:
        gc.disable()
    print("| body | MiB | longest wait ms (best-worst) | parse s | outcome |")
    print("|---|---:|---:|---:|---|")
    for kind, body in bodies(a.mib).items():
        runs = [measure(body) for _ in range(a.rounds)]
        waits = sorted(r[0] * 1e3 for r in runs)
        took = min(r[1] for r in runs)
        print(
            f"| {kind} | {len(body) / 2**20:.1f} | {waits[0]:.1f}-{waits[-1]:.1f} | "
            f"{took:.2f} | {orjson.dumps(runs[0][2]).decode()} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
