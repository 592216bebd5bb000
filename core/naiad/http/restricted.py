"""``--http-restricted-api``: API categories that need a header, as a request hook of the edge.

Triton's form: ``--http-restricted-api=<category>[,<category>...]:<header>=<value>``
(repeatable). A request to an endpoint of a restricted category without ``<header>: <value>``
is answered 403 ``{"error": "This API is restricted, expecting header '<header>'"}`` — by
either HTTP front, since the check is an :class:`~naiad.http.edge.HttpHooks` request hook. The
categories are the endpoint table's ``api`` field (the same names as
``--grpc-restricted-protocol``).
"""

from __future__ import annotations

from ..grpc.config import CATEGORIES
from .edge import Request, RequestHook
from .handlers import Answer, error_answer


def parse_restricted_api(values: list[str]) -> dict[str, tuple[str, str]]:
    """category -> (header name in lower case, value), checked as Triton does."""
    out: dict[str, tuple[str, str]] = {}
    for text in values:
        cats, colon, setting = text.partition(":")
        key, eq, value = setting.partition("=")
        if not colon or not eq or not cats or not key:
            raise ValueError(
                f"--http-restricted-api option format is '<API name>:<setting>=<value>'. Got {text}"
            )
        for cat in cats.split(","):
            cat = cat.strip()
            if cat not in CATEGORIES:
                raise ValueError(f"unknown restricted api '{cat}'")
            if cat in out:
                raise ValueError(
                    f"restricted api '{cat}' can not be specified in multiple config groups"
                )
            out[cat] = (key.lower(), value)
    return out


def restricted_api_hook(rules: dict[str, tuple[str, str]]) -> RequestHook:
    """The request hook that enforces ``rules`` (from :func:`parse_restricted_api`)."""

    def check(request: Request) -> Answer | None:
        endpoint = request.endpoint
        rule = rules.get(endpoint.api) if endpoint is not None else None
        if rule is None:
            return None
        key, value = rule
        if request.headers.get(key) == value:
            return None
        return error_answer(403, f"This API is restricted, expecting header '{key}'")

    return check
