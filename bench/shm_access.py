#!/usr/bin/env python3
"""What one system-shared-memory input read and output write cost in naiad, in-process.

    .venv/bin/python bench/shm_access.py [-n 20000]

Registers a region of a POSIX shm object with naiad's :class:`~naiad.shm.SharedMemoryManager`
and times, best of 5, one request's worth of access — a lease, one ``read`` of an input, one
``write`` of an output, the release — for 64 B (``simple``'s INT32 [1,16]), 64 KiB, 1 MiB and
16 MiB tensors. Run it with ``PYTHONPATH=<checkout>/core`` to time another checkout's manager.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

SIZES = [64, 64 << 10, 1 << 20, 16 << 20]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("-n", type=int, default=20000)
    a = ap.parse_args()
    from naiad import shm

    key = f"/naiad-bench-{uuid.uuid4().hex[:8]}"
    path = Path("/dev/shm") / key[1:]
    path.write_bytes(os.urandom(2 * SIZES[-1]))
    manager = shm.SharedMemoryManager()
    try:
        manager.register("bench", key, 0, 2 * SIZES[-1])
        print(f"# {shm.__file__}: µs per request (read + write), best of 5")
        print("| tensor | read + write |")
        print("|---|---|")
        for size in SIZES:
            out = os.urandom(size)
            n = max(20, a.n * 64 // max(size, 64 << 4)) if size > 64 else a.n
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(n):
                    lease = manager.lease()
                    data = lease.read("bench", 0, size)
                    lease.write("bench", size, size, out, "OUTPUT0")
                    del data
                    lease.release()
                best = min(best, (time.perf_counter() - t0) / n)
            label = f"{size} B" if size < 1024 else f"{size >> 10} KiB"
            print(f"| {label} | {best * 1e6:.1f} |")
    finally:
        manager.close()
        path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
