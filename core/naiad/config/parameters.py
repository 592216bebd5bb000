"""Typed reads of a config's ``parameters`` map, shared by every backend.

Triton's backends read ``parameters { key: "..." value { string_value: "..." } }`` by keys of
their own (``INTRA_OP_THREAD_COUNT``, ``execution_mode``...). Each reader looks the key up as
written, then in lower case, strips the value, and raises :class:`naiad.ModelLoadError` naming the
key when the value has the wrong form, so a model with a bad parameter becomes UNAVAILABLE with a
reason instead of failing later.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelLoadError

_TRUE = ("1", "true", "on", "yes")
_FALSE = ("0", "false", "off", "no")


def parameter(config: Any, key: str) -> str | None:
    """The stripped ``string_value`` of ``key`` (or its lower-case spelling); None if absent."""
    for k in (key, key.lower()):
        if k in config.parameters:
            return str(config.parameters[k].string_value).strip()
    return None


def int_parameter(config: Any, key: str, default: int, *, minimum: int | None = None) -> int:
    """An integer parameter (``default`` when absent or empty); below ``minimum`` is an error."""
    value = parameter(config, key)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or (minimum is not None and number < minimum):
        bound = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ModelLoadError(f"parameter '{key}' must be {bound}, got '{value}'")
    return number


def bool_parameter(config: Any, key: str, default: bool) -> bool:
    """``1/true/on/yes`` or ``0/false/off/no`` (any case); ``default`` when absent or empty."""
    value = (parameter(config, key) or "").lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ModelLoadError(f"parameter '{key}' must be true or false, got '{value}'")


def float_parameter(
    config: Any, key: str, default: float, *, low: float = float("-inf"), high: float = float("inf")
) -> float:
    """A number in ``[low, high]``; ``default`` when absent or empty."""
    value = parameter(config, key)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not low <= number <= high:
        raise ModelLoadError(
            f"parameter '{key}' must be a number from {low:g} to {high:g}, got '{value}'"
        )
    return number
