"""Logging: Triton's switches and formats, from the command line and through naiad.logs's API."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import time

import pytest
from conftest import free_port
from naiad.errors import InvalidArgument, Unsupported
from naiad.logs import (
    LogSettings,
    NaiadLogHandler,
    configure_logging,
    get_settings,
    update_settings,
    verbose_level,
)

DEFAULT_LINE = re.compile(r"^[IWEV]\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ [\w.]+:\d+\] ")
ISO_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ [IWEV] \d+ [\w.]+:\d+\] ")


@pytest.fixture
def stream():
    """naiad's handler writing into a StringIO; the root logger is put back afterwards."""
    root = logging.getLogger()
    level = root.level
    out = io.StringIO()
    yield out
    for h in [h for h in root.handlers if isinstance(h, NaiadLogHandler)]:
        root.removeHandler(h)
        h.close()
    root.setLevel(level)


def _lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_switches_are_independent(stream):
    configure_logging(LogSettings(log_info=False, log_warning=True, log_error=False), stream)
    log = logging.getLogger("naiad.test")
    log.info("info")
    log.warning("warning")
    log.error("error")
    log.debug("verbose")
    assert [line.rsplit("] ", 1)[1] for line in _lines(stream)] == ["warning"]


def test_verbose_levels(stream):
    configure_logging(LogSettings(log_verbose_level=2), stream)
    log = logging.getLogger("naiad.test")
    log.log(verbose_level(1), "v1")
    log.log(verbose_level(2), "v2")
    log.log(verbose_level(3), "v3")
    assert [line.rsplit("] ", 1)[1] for line in _lines(stream)] == ["v1", "v2"]
    assert _lines(stream)[0].startswith("V")


def test_formats(stream):
    configure_logging(LogSettings(), stream)
    logging.getLogger("naiad.test").info("hello")
    update_settings({"log_format": "ISO8601"})
    logging.getLogger("naiad.test").warning("world")
    first, second = _lines(stream)
    assert DEFAULT_LINE.match(first) and first.endswith("test_logs.py:" + first.split(":")[-1])
    assert first.endswith("] hello")
    assert ISO_LINE.match(second) and second.endswith("] world")
    assert " W " in second


def test_get_and_update_settings(stream):
    configure_logging(LogSettings(), stream)
    assert get_settings() == {
        "log_file": "",
        "log_info": True,
        "log_warning": True,
        "log_error": True,
        "log_verbose_level": 0,
        "log_format": "default",
    }
    new = update_settings({"log_info": False, "log_verbose_level": 1, "unknown": 3})
    assert new["log_info"] is False and new["log_verbose_level"] == 1
    assert get_settings() == new
    logging.getLogger("naiad.test").info("not shown")
    logging.getLogger("naiad.test").debug("shown")
    assert [line.rsplit("] ", 1)[1] for line in _lines(stream)] == ["shown"]


@pytest.mark.parametrize(
    "body, error",
    [
        ({"log_info": "yes"}, InvalidArgument),
        ({"log_verbose_level": -1}, InvalidArgument),
        ({"log_verbose_level": True}, InvalidArgument),
        ({"log_format": "json"}, InvalidArgument),
        ({"log_file": "/tmp/elsewhere.log"}, Unsupported),
    ],
)
def test_bad_updates_change_nothing(stream, body, error):
    configure_logging(LogSettings(), stream)
    before = get_settings()
    with pytest.raises(error):
        update_settings({"log_error": False, **body})
    assert get_settings() == before


def test_log_file(tmp_path, stream):
    path = tmp_path / "naiad.log"
    configure_logging(LogSettings(log_file=str(path)), stream)
    logging.getLogger("naiad.test").error("to the file")
    assert update_settings({"log_file": str(path)})["log_file"] == str(path)  # unchanged: fine
    configure_logging(LogSettings(), stream)  # replaces (and closes) the file handler
    assert "] to the file" in path.read_text()
    assert stream.getvalue() == ""


def test_server_log_flags(server_factory, example_repo):
    srv = server_factory(example_repo, "--log-format", "ISO8601", "--log-verbose", "1")
    lines = [line for line in srv.log().splitlines() if line.strip()]
    assert lines and all(ISO_LINE.match(line) for line in lines)
    assert any(" V " in line for line in lines)  # verbose lines are on


def test_server_log_file(example_repo, tmp_path):
    path = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "naiad", "serve", "--model-repository", str(example_repo)]
    cmd += ["--http-port", str(free_port()), "--metrics-port", str(free_port())]
    cmd += ["--grpc-port", str(free_port()), "--grpc-address", "127.0.0.1"]
    cmd += ["--http-address", "127.0.0.1", "--log-file", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists() and "naiad is ready" in path.read_text():
                break
            time.sleep(0.05)
        assert "naiad is ready" in path.read_text()
    finally:
        proc.terminate()
        console, _ = proc.communicate(timeout=30)
    assert b"naiad is ready" not in console
    assert DEFAULT_LINE.match(path.read_text())
