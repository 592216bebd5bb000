"""A test server's resources as /proc shows them: descriptors, memory, page faults."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest


def fds(pid: int) -> int:
    """How many descriptors the process holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def settles(pid: int, limit: int, within: float = 10.0) -> int:
    """The descriptor count once it is at most ``limit`` (or after ``within`` s)."""
    deadline = time.monotonic() + within
    while (n := fds(pid)) > limit and time.monotonic() < deadline:
        time.sleep(0.1)
    return n


def status_mib(pid: int, key: str) -> float:
    """A ``/proc/PID/status`` size (``VmRSS``, ``VmHWM``...) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def reset_peak(pid: int) -> None:
    """``VmHWM`` counts from now on (the test is skipped where that is not allowed)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pytest.skip("cannot reset the server's VmHWM here")


def minor_faults(pid: int) -> int:
    """The process's minor page faults so far."""
    # /proc/PID/stat: the command may hold spaces, so count from the closing parenthesis
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[7])  # minflt, the 10th field of the line
