"""Header forwarding (``--http-header-forward-pattern``, ``--grpc-header-forward-pattern``).

Triton copies each request header (HTTP) or metadata key (gRPC) whose name the pattern matches
into the inference request as a string parameter of the same name, for the backend to read.
The match is a partial one (``search``), case-insensitive unless the pattern starts with
``(?-i)``; a matching name Triton reserves for itself is refused. One implementation for both
transports.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .errors import InvalidArgument
from .inference import InferRequest

#: request parameters Triton interprets; a forwarded header may not take these names (nor any
#: ``triton_*`` one)
RESERVED = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers"}
    | {"binary_data_output"}
)


def compile_pattern(text: str | None, flag: str) -> re.Pattern[str] | None:
    """``text`` as Triton compiles it (``(?i)`` prepended unless it turns that off); None
    when unset. A bad expression is a ValueError naming ``flag``."""
    if not text:
        return None
    flags = 0
    if text.startswith("(?-i)"):
        text = text[5:]
    else:
        flags = re.IGNORECASE
    try:
        return re.compile(text, flags)
    except re.error as exc:
        raise ValueError(f"invalid {flag}: {exc}") from exc


def forward_headers(
    request: InferRequest, headers: Iterable[tuple[str, Any]], pattern: re.Pattern[str]
) -> None:
    """Each of ``headers`` whose name ``pattern`` matches becomes a string parameter."""
    for key, value in headers:
        if not pattern.search(key):
            continue
        if key in RESERVED or key.startswith("triton_"):
            raise InvalidArgument(
                f"Header '{key}' is reserved for Triton usage and cannot be forwarded."
            )
        request.parameters[key] = value if isinstance(value, str) else value.decode("latin-1")
