"""``--http-restricted-api``: API categories that need a header, as a request hook of the edge.

Triton's form: ``--http-restricted-api=<category>[,<category>...]:<header>=<value>``
(repeatable). A request to an endpoint of a restricted category without ``<header>: <value>``
is answered 403 ``{"error": "This API is restricted, expecting header '<header>'"}`` — by
either HTTP front, since the check is an :class:`~naiad.http.edge.HttpHooks` request hook. The
categories are the endpoint table's ``api`` field (the same names as
``--grpc-restricted-protocol``).
"""

from __future__ import annotations

from ..restrictions import parse_restrictions
from .edge import Request, RequestHook
from .handlers import Answer, error_answer


def parse_restricted_api(values: list[str]) -> dict[str, tuple[str, str]]:
    """category -> (header name in lower case, value), checked as Triton does."""
    return parse_restrictions(values, "--http-restricted-api", "API name", "restricted api")


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
