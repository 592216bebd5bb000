"""Starting an instance process: the command, its two sockets, the spec it builds its backend
from, and the throw-away process of an auto-complete."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..errors import ModelLoadError
from .wire import Channel, remove_segments

_generations = itertools.count(1)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "an unknown status"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"signal {name} ({-code})"
    return f"exit code {code}"


@dataclass
class Spawned:
    """A fresh child process and the server's ends of its two sockets."""

    proc: subprocess.Popen
    #: life cycle, calls into the server, streams, blocking executions (the reader thread's)
    channel: Channel
    #: executions the event loop writes and reads itself (:class:`~.link.LoopLink`)
    fast: Connection
    fast_channel: Channel
    #: the prefix of every shared-memory segment of this child and of its server side
    base: str
    generation: int

    def close(self) -> None:
        """Close both sockets (the fast one only when no loop watches it)."""
        self.channel.close()
        self.fast_channel.close()


def spawn(env: Mapping[str, str] | None, label: str) -> Spawned:
    generation = next(_generations)
    base = f"naiad-{os.getpid()}-{generation}-"
    parent_sock, child_sock = socket.socketpair()
    parent_fast, child_fast = socket.socketpair()
    fds = [child_sock.fileno(), child_fast.fileno()]
    command = [
        sys.executable,
        "-m",
        "naiad.isolation.child",
        str(fds[0]),
        base + "c",
        str(fds[1]),
    ]
    try:
        proc = subprocess.Popen(command, pass_fds=fds, env=dict(env) if env is not None else None)
    except OSError as exc:
        parent_sock.close()
        parent_fast.close()
        raise ModelLoadError(f"cannot start the process of {label}: {exc}") from exc
    finally:
        child_sock.close()
        child_fast.close()
    channel = Channel(Connection(parent_sock.detach()), base + "p")
    fast = Connection(parent_fast.detach())
    return Spawned(proc, channel, fast, Channel(fast, base + "q"), base, generation)


def spec(
    backend_cls: type, config: ModelConfig, model_path: Path, version_path: Path, ctx: Any
) -> dict[str, Any]:
    from ..logs import get_settings

    return {
        "module": backend_cls.__module__,
        "qualname": backend_cls.__qualname__,
        "config": config.SerializeToString(),
        "model_path": str(model_path),
        "version_path": str(version_path),
        "instance": (ctx.name, ctx.kind, ctx.device_id) if ctx is not None else ("", "", -1),
        "log": get_settings(),
    }


def run_auto_complete(
    backend_cls: type, config: ModelConfig, version_path: Path, env: Mapping[str, str] | None
) -> None:
    """``backend_cls.auto_complete_config`` in a throw-away process, as Triton does it."""
    label = f"the auto-complete of model '{config.name}'"
    child = spawn(env, label)
    try:
        child.channel.send(
            ("auto_complete", spec(backend_cls, config, version_path.parent, version_path, None))
        )
        try:
            reply = child.channel.recv()
        except (EOFError, OSError):
            code = child.proc.wait()
            raise ModelLoadError(
                f"the process of {label} exited with {describe_exit(code)}"
            ) from None
        if reply[0] == "init_error":
            raise reply[1]
        completed = ModelConfig()
        completed.ParseFromString(reply[1])
        config.CopyFrom(completed)
    finally:
        child.close()
        try:
            child.proc.wait(10)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()
        remove_segments(child.base)


class Waiter:
    """A blocking caller's wait for one reply."""

    __slots__ = ("event", "value", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def done(self, value: Any, error: BaseException | None) -> None:
        self.value, self.error = value, error
        self.event.set()
