"""Fixtures: real models written by the tests, the real server in a subprocess, real clients."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_make_models():
    spec = importlib.util.spec_from_file_location(
        "naiad_make_models", ROOT / "examples" / "make_models.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_models = _load_make_models()


#: ports free_port handed out in this test run: the kernel may offer a port again once its
#: probe socket is closed, before the server that was given it has bound it (a server's HTTP and
#: gRPC ports once came out equal, and it exited with "address already in use")
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on, never one this run handed out before."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@dataclass
class RunningServer:
    process: subprocess.Popen
    port: int
    log_path: Path
    #: the metrics port (``--metrics-port``), None when metrics are off
    metrics_port: int | None = None
    #: the gRPC port (``--grpc-port``), None when the test turned gRPC off
    grpc_port: int | None = None

    @property
    def url(self) -> str:
        """host:port, the form tritonclient wants."""
        return f"127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_url(self) -> str:
        """host:port of the gRPC endpoint, the form tritonclient.grpc wants."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """``http://127.0.0.1:PORT/metrics`` of this server's metrics endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


_GRPC_OFF = ("--allow-grpc=false", "--allow-grpc=0")


def _option(args: tuple[str, ...], name: str) -> str | None:
    """The value of ``name`` in ``args`` (``--name=V`` or ``--name V``), None when absent."""
    for i, a in enumerate(args):
        if a.startswith(name + "="):
            return a.partition("=")[2]
        if a == name and i + 1 < len(args):
            return args[i + 1]
    return None


def start_server(
    repo: Path | list[Path],
    *args: str,
    log_dir: Path,
    timeout: float = 90,
    wait_ready: bool = True,
) -> RunningServer:
    """Start ``naiad serve`` on a free loopback port and wait until start-up has finished."""
    port = free_port()
    repos = repo if isinstance(repo, list) else [repo]
    cmd = [
        sys.executable,
        "-m",
        "naiad",
        "serve",
        "--http-address",
        "127.0.0.1",
        "--http-port",
        str(port),
    ]
    for r in repos:
        cmd += ["--model-repository", str(r)]
    # a free metrics port too (never 8002), unless the test chose one
    metrics_port = None
    if not any(a.startswith("--metrics-port") for a in args):
        metrics_port = free_port()
        cmd += ["--metrics-port", str(metrics_port)]
    else:
        for i, a in enumerate(args):
            if a.startswith("--metrics-port="):
                metrics_port = int(a.partition("=")[2])
            elif a == "--metrics-port" and i + 1 < len(args):
                metrics_port = int(args[i + 1])
    grpc_port = _option(args, "--grpc-port")
    if grpc_port is None and not any(a in _GRPC_OFF for a in args):
        grpc_port = free_port()  # a free gRPC port too (never 8001), unless the test chose
        cmd += ["--grpc-port", str(grpc_port)]
        if _option(args, "--grpc-address") is None:
            cmd += ["--grpc-address", "127.0.0.1"]
    cmd += list(args)
    log_path = log_dir / f"naiad-{port}.log"
    log_file = open(log_path, "wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # test-only plugins (``--plugin naiad_test_backends``) are importable by the server
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "tests" / "plugins"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    server = RunningServer(proc, port, log_path, metrics_port, grpc_port and int(grpc_port))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if not wait_ready:
                return server
            raise RuntimeError(f"naiad exited with {proc.returncode}:\n{server.log()}")
        if "naiad is ready" in server.log():
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"naiad did not start in {timeout}s:\n{server.log()}")


@pytest.fixture(scope="session")
def models():
    """``examples/make_models.py``: builders of the example models, and ``mlp_numpy``."""
    return make_models


@pytest.fixture(scope="session")
def example_repo(tmp_path_factory) -> Path:
    """Triton's example models (simple, simple_string, simple_identity, mlp) built fresh."""
    repo = tmp_path_factory.mktemp("example_repo")
    make_models.write_all(repo)
    return repo


def sleep_config(count: int = 2) -> str:
    """config.pbtxt of a ``test_sleep`` model (tests/plugins: sleeps as its input says, then
    echoes it), ``count`` instances: for tests that need a request to take a while."""
    return f"""backend: "test_sleep"
max_batch_size: 4
input [{{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }}]
output [{{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }}]
instance_group [{{ kind: KIND_CPU count: {count} }}]
"""


@pytest.fixture(scope="session")
def sleep_repo(tmp_path_factory) -> Path:
    """A repository with one ``sleepy`` model (:func:`sleep_config`; serve it with
    ``--plugin naiad_test_backends``)."""
    repo = tmp_path_factory.mktemp("sleep_repo")
    (repo / "sleepy" / "1").mkdir(parents=True)
    (repo / "sleepy" / "config.pbtxt").write_text(sleep_config())
    return repo


@pytest.fixture(scope="session")
def server(example_repo, tmp_path_factory) -> Iterator[RunningServer]:
    """One server over the example repository, shared by the read-mostly tests."""
    srv = start_server(example_repo, log_dir=tmp_path_factory.mktemp("logs"))
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(server.url)
    yield c
    c.close()


@pytest.fixture
def gc(server):
    """A tritonclient.grpc client of the shared server."""
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


@pytest.fixture
def server_factory(tmp_path) -> Iterator:
    """Start servers with custom repositories/flags; all are stopped at the end of the test."""
    started: list[RunningServer] = []

    def factory(repo, *args, **kwargs) -> RunningServer:
        srv = start_server(repo, *args, log_dir=tmp_path, **kwargs)
        started.append(srv)
        return srv

    yield factory
    for srv in started:
        srv.stop()
