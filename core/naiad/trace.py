"""Triton's trace settings (the ``trace`` extension), stored and validated; no tracing yet.

``GET|POST /v2/trace/setting`` and ``/v2/models/{m}/trace/setting`` read and change these
settings with Triton's JSON shape and validation messages, so clients and tools that configure
tracing work unchanged. naiad does not (yet) record traces: the settings are kept and reported,
nothing more (docs/http-api.md says so).

A model's settings are the global ones overlaid with what was set for that model; a JSON
``null`` clears a model's override of that setting (and resets a global setting to its start-up
value).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import InvalidArgument, Unsupported

LEVELS = ("TIMESTAMPS", "TENSORS")
_UINT32_MAX = 2**32 - 1
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class TraceSetting:
    """One full set of trace settings."""

    level: tuple[str, ...] = ()
    rate: int = 1000
    count: int = -1
    log_frequency: int = 0
    file: str = ""
    mode: str = "triton"

    def as_json(self) -> dict[str, Any]:
        """Triton's response object: strings, and ``trace_level`` as an array."""
        return {
            "trace_level": list(self.level) or ["OFF"],
            "trace_rate": str(self.rate),
            "trace_count": str(self.count),
            "log_frequency": str(self.log_frequency),
            "trace_file": self.file,
            "trace_mode": self.mode,
        }


#: request key -> TraceSetting field
_FIELDS = {
    "trace_level": "level",
    "trace_rate": "rate",
    "trace_count": "count",
    "log_frequency": "log_frequency",
}


@dataclass
class TraceSettings:
    """The global trace settings and per-model overrides of one server."""

    initial: TraceSetting = field(default_factory=TraceSetting)
    current: TraceSetting | None = None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.current is None:
            self.current = self.initial

    def get(self, model: str = "") -> dict[str, Any]:
        """The settings in force for ``model`` (or the global ones), as Triton's JSON."""
        assert self.current is not None
        overrides = self.models.get(model, {}) if model else {}
        return replace(self.current, **overrides).as_json()

    def update(self, changes: Mapping[str, Any], model: str = "") -> dict[str, Any]:
        """Apply a POST body (every value checked before anything changes); return the result."""
        if "trace_file" in changes:
            raise Unsupported("trace file location can not be updated through network protocol")
        updates: dict[str, Any] = {}
        clears: list[str] = []
        for key, attr in _FIELDS.items():
            if key not in changes:
                continue
            value = changes[key]
            if value is None:
                clears.append(attr)
            elif key == "trace_level":
                updates[attr] = _level(value)
            elif key == "trace_count":
                updates[attr] = _integer(key, value, -1, _INT32_MAX)
            else:
                updates[attr] = _integer(key, value, 0, _UINT32_MAX)
        assert self.current is not None
        if model:
            overrides = self.models.setdefault(model, {})
            for attr in clears:
                overrides.pop(attr, None)
            overrides.update(updates)
        else:
            reset = {attr: getattr(self.initial, attr) for attr in clears}
            self.current = replace(self.current, **reset, **updates)
        return self.get(model)


def _level(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument("Unable to parse 'trace_level': expecting an array of strings")
    if "OFF" in value:
        if len(value) != 1:
            raise InvalidArgument("Expect only one trace level 'OFF' is specified")
        return ()
    for v in value:
        if v not in LEVELS:
            raise InvalidArgument(
                f"Unable to parse 'trace_level', got: {v} (expecting OFF, TIMESTAMPS or TENSORS)"
            )
    return tuple(level for level in LEVELS if level in value)


def _integer(key: str, value: Any, low: int, high: int) -> int:
    """Triton sends these as strings ("1000"); plain JSON integers are accepted too."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidArgument(f"Unable to parse '{key}', got: {value}")
    text = str(value).strip()
    try:
        number = int(text)
    except ValueError:
        raise InvalidArgument(f"Unable to parse '{key}', got: {text}") from None
    if key == "trace_count" and number < low:
        raise InvalidArgument(
            f"Unable to parse 'trace_count'. Expecting value >= {low}, got:{text}"
        )
    if not low <= number <= high:
        raise InvalidArgument(
            f"Unable to parse '{key}', value is out of range [ {low}, {high} ], got: {text}"
        )
    return number
