"""The one error type of :mod:`naiad.config`."""

from __future__ import annotations

from ..errors import ModelLoadError


class ConfigError(ModelLoadError):
    """A model configuration is malformed or inconsistent.

    The message says what is wrong and names the model and the field, keeping the wording of
    Triton's own message where naiad mirrors a Triton check. As a :class:`ModelLoadError` it
    makes the model UNAVAILABLE with this message as the reason (HTTP 400 where it is
    reported to a client).
    """
