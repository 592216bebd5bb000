"""Restricted APIs (``--http-restricted-api``, ``--grpc-restricted-protocol``): categories of
endpoints / RPCs that need a header, parsed once for both transports.

Triton's form: ``<category>[,<category>...]:<key>=<value>``, repeatable; a category may appear
in one group only. Each transport decides what the categories cover and how it answers a
request without the header.
"""

from __future__ import annotations

#: the categories both flags take (Triton's names)
CATEGORIES = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)


def parse_restrictions(
    values: list[str], flag: str, group: str, noun: str, prefix: str = ""
) -> dict[str, tuple[str, str]]:
    """category -> (``prefix`` + key in lower case, value), checked as Triton does.

    ``group`` and ``noun`` are the words of Triton's messages for ``flag``: ``API name`` /
    ``restricted api`` for HTTP, ``config name`` / ``restricted protocol`` for gRPC.
    """
    out: dict[str, tuple[str, str]] = {}
    for text in values:
        cats, colon, setting = text.partition(":")
        key, eq, value = setting.partition("=")
        if not colon or not eq or not cats or not key:
            raise ValueError(f"{flag} option format is '<{group}>:<setting>=<value>'. Got {text}")
        for cat in cats.split(","):
            cat = cat.strip()
            if cat not in CATEGORIES:
                raise ValueError(f"unknown {noun} '{cat}'")
            if cat in out:
                raise ValueError(f"{noun} '{cat}' can not be specified in multiple config groups")
            out[cat] = (prefix + key.lower(), value)
    return out
