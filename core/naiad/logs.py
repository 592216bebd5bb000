"""Logging with Triton's switches and line formats, changeable at run time.

Triton does not filter by one threshold: INFO, WARNING and ERROR are switched on and off one by
one, and verbose messages have levels of their own (``--log-verbose N`` shows levels 1..N). naiad
maps that onto :mod:`logging`: one handler on the root logger carries the current
:class:`LogSettings`, a filter applies the switches, and a formatter writes Triton's line shapes::

    default  I1125 15:06:05.123456 4242 server.py:97] naiad is ready
    ISO8601  2026-11-25T15:06:05Z I 4242 server.py:97] naiad is ready

Verbose level ``n`` is the Python level ``DEBUG + 1 - n`` (:func:`verbose_level`), so plain
``log.debug`` is verbose level 1.

The API, for the command line and the ``/v2/logging`` endpoint:

- :func:`configure_logging` installs (or replaces) naiad's handler with a :class:`LogSettings`.
- :func:`get_settings` returns the settings as the JSON object of ``GET /v2/logging``.
- :func:`update_settings` validates a ``POST /v2/logging`` body, applies it, and returns the new
  JSON object; it raises :class:`~naiad.errors.InvalidArgument` (400) for a bad value and
  :class:`~naiad.errors.Unsupported` (501) for a change of ``log_file``, as Triton does.

The state lives on the handler installed in the root logger (logging is process-wide by nature),
not in a module global.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import IO, Any

from .errors import InvalidArgument, Unsupported

FORMATS = ("default", "ISO8601")


@dataclass(frozen=True)
class LogSettings:
    """Triton's log settings, named as ``/v2/logging`` names them."""

    log_file: str = ""
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_verbose_level: int = 0
    log_format: str = "default"

    def as_json(self) -> dict[str, Any]:
        """The object ``GET /v2/logging`` answers with."""
        return asdict(self)


def verbose_level(n: int) -> int:
    """The :mod:`logging` level of Triton's verbose level ``n`` (1 is ``logging.DEBUG``)."""
    return logging.DEBUG + 1 - max(1, n)


def _letter(levelno: int) -> str:
    if levelno >= logging.ERROR:
        return "E"
    if levelno >= logging.WARNING:
        return "W"
    if levelno >= logging.INFO:
        return "I"
    return "V"


class TritonFormatter(logging.Formatter):
    """Triton's line formats: ``default`` (glog-like, local time) and ``ISO8601`` (UTC)."""

    def __init__(self, log_format: str = "default") -> None:
        super().__init__()
        self.log_format = log_format

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        elif record.exc_text:
            message = f"{message}\n{record.exc_text}"
        if record.stack_info:
            message = f"{message}\n{self.formatStack(record.stack_info)}"
        where = f"{record.process} {record.filename}:{record.lineno}]"
        letter = _letter(record.levelno)
        if self.log_format == "ISO8601":
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
            return f"{stamp} {letter} {where} {message}"
        t = time.localtime(record.created)
        usec = int((record.created % 1) * 1_000_000)
        stamp = time.strftime("%m%d %H:%M:%S", t)
        return f"{letter}{stamp}.{usec:06d} {where} {message}"


class NaiadLogHandler(logging.StreamHandler):
    """The one handler naiad puts on the root logger; it owns the current settings."""

    def __init__(self, settings: LogSettings, stream: IO[str] | None = None) -> None:
        self._owned: IO[str] | None = None
        super().__init__(stream if stream is not None else sys.stderr)
        self._default_stream = self.stream
        self.settings = settings
        self.apply(settings)

    def apply(self, settings: LogSettings) -> None:
        """Switch to ``settings``: format, output file, and the level of the root logger."""
        self.acquire()
        try:
            if settings.log_file != self.settings.log_file or (
                settings.log_file and self._owned is None
            ):
                new: IO[str] = (
                    open(settings.log_file, "a", encoding="utf-8")
                    if settings.log_file
                    else self._default_stream
                )
                old, self._owned = self._owned, (new if settings.log_file else None)
                self.setStream(new)
                if old is not None:
                    old.close()
            self.settings = settings
            self.setFormatter(TritonFormatter(settings.log_format))
        finally:
            self.release()
        logging.getLogger().setLevel(_lowest_level(settings))

    def filter(self, record: logging.LogRecord) -> bool:
        s = self.settings
        level = record.levelno
        if level >= logging.ERROR:
            return s.log_error
        if level >= logging.WARNING:
            return s.log_warning
        if level >= logging.INFO:
            return s.log_info
        return s.log_verbose_level > 0 and level >= verbose_level(s.log_verbose_level)

    def close(self) -> None:
        self.acquire()
        try:
            if self._owned is not None:
                self._owned.close()
                self._owned = None
        finally:
            self.release()
        super().close()


def _lowest_level(s: LogSettings) -> int:
    """The root logger's level: the lowest one any switch lets through (cheap disabled calls)."""
    if s.log_verbose_level > 0:
        return verbose_level(s.log_verbose_level)
    if s.log_info:
        return logging.INFO
    if s.log_warning:
        return logging.WARNING
    return logging.ERROR


def _handler() -> NaiadLogHandler | None:
    for h in logging.getLogger().handlers:
        if isinstance(h, NaiadLogHandler):
            return h
    return None


def configure_logging(
    settings: LogSettings | None = None, stream: IO[str] | None = None
) -> LogSettings:
    """Install naiad's handler on the root logger, replacing any earlier one of naiad's.

    ``stream`` is where the log goes when ``settings.log_file`` is empty (default stderr).
    Returns the settings in force.
    """
    settings = settings or LogSettings()
    _validate(settings)
    root = logging.getLogger()
    old = _handler()
    if old is not None:
        root.removeHandler(old)
        old.close()
    root.addHandler(NaiadLogHandler(settings, stream))
    return settings


def get_settings() -> dict[str, Any]:
    """The current settings as ``GET /v2/logging`` returns them (defaults if not configured)."""
    h = _handler()
    return (h.settings if h is not None else LogSettings()).as_json()


def update_settings(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Apply a ``POST /v2/logging`` body and return the full new settings.

    Every value is checked before anything changes. Unknown keys are ignored, as Triton does.
    Raises :class:`InvalidArgument` for a value of the wrong type or a negative verbose level,
    and :class:`Unsupported` for a change of ``log_file`` (Triton stopped allowing that in 2024).
    """
    h = _handler()
    if h is None:
        configure_logging()
        h = _handler()
        assert h is not None
    current = h.settings
    updates: dict[str, Any] = {}
    for key in ("log_info", "log_warning", "log_error"):
        if key in changes:
            value = changes[key]
            if not isinstance(value, bool):
                raise InvalidArgument(f"expect boolean for '{key}'")
            updates[key] = value
    if "log_verbose_level" in changes:
        value = changes["log_verbose_level"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument("expect integer for 'log_verbose_level'")
        if value < 0:
            raise InvalidArgument("'log_verbose_level' must be non-negative")
        updates["log_verbose_level"] = value
    if "log_format" in changes:
        value = changes["log_format"]
        if not isinstance(value, str):
            raise InvalidArgument("expect string for 'log_format'")
        if value not in FORMATS:
            raise InvalidArgument(
                f"invalid argument for log_format, got: {value}, expected one of: "
                + ", ".join(FORMATS)
            )
        updates["log_format"] = value
    if "log_file" in changes:
        value = changes["log_file"]
        if not isinstance(value, str):
            raise InvalidArgument("expect string for 'log_file'")
        if value != current.log_file:
            raise Unsupported("log file location can not be updated through network protocol")
    new = replace(current, **updates)
    h.apply(new)
    return new.as_json()


def _validate(settings: LogSettings) -> None:
    if settings.log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}: {settings.log_format!r}")
    if settings.log_verbose_level < 0:
        raise ValueError("log verbose level must be non-negative")
    if settings.log_file:
        parent = os.path.dirname(os.path.abspath(settings.log_file))
        if not os.path.isdir(parent):
            raise ValueError(f"log file folder does not exist: {parent}")
