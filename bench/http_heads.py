#!/usr/bin/env python3
"""What parsing one request head costs on naiad's lean front (naiad.http.fast.parse_head).

    .venv/bin/python bench/http_heads.py [-n 20000]

Three heads as clients send them — tritonclient's binary inference request, perf_analyzer's,
and a GET for model readiness — each timed two ways, in-process, best of 5 runs:

- ``repeated``: the same head bytes again and again (a client in a loop: the front keeps what a
  head parsed to, keyed by its bytes, and does not parse it again);
- ``distinct``: every head different (a changing header value), so every one is parsed.

Run it against another checkout's front with ``PYTHONPATH=<checkout>/core`` to compare parsers.
"""

from __future__ import annotations

import argparse
import sys
import time

HEADS = {
    "tritonclient infer": (
        b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
        b"User-Agent: python/gevent-http-client-1.5.5\r\nAccept-Encoding: gzip, deflate\r\n"
        b"Inference-Header-Content-Length: 188\r\nContent-Length: 316\r\n"
        b"X-Id: %d\r\n\r\n"
    ),
    "perf_analyzer infer": (
        b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: localhost:8000\r\nAccept: */*\r\n"
        b"Inference-Header-Content-Length: 188\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: 316\r\nX-Id: %d\r\n\r\n"
    ),
    "GET ready": (
        b"GET /v2/models/simple/ready HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nX-Id: %d\r\n\r\n"
    ),
}


def _time(parse, heads: list[bytes]) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for head in heads:
            parse(head, 0, 1 << 26)
        best = min(best, time.perf_counter() - t0)
    return best / len(heads) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("-n", type=int, default=20000)
    a = ap.parse_args()
    from naiad.http import fast

    print(f"# parse_head of {fast.__file__}, µs per head (best of 5 x {a.n})")
    print("| head | repeated | distinct |")
    print("|---|---|---|")
    for label, template in HEADS.items():
        same = [template % 0] * a.n
        distinct = [template % i for i in range(a.n)]
        fast._HEADS.clear()
        assert fast.parse_head(same[0], 0, 1 << 26) not in (None, fast._NOT_OURS)
        hit = _time(fast.parse_head, same)
        miss = _time(lambda h, p, m: (fast._HEADS.clear(), fast.parse_head(h, p, m)), distinct)
        print(f"| {label} | {hit:.2f} | {miss:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
