"""HTTP hooks used by the tests through ``--plugin naiad_test_http_hooks``.

A request hook refuses any request carrying ``X-Test-Deny`` (as an authentication check would),
and an answer hook tags every answer with ``X-Test-Hook: <method> <path> <status>`` (as a CORS
or tracing header would): tests read from which requests they ran on, on both HTTP fronts.
"""

from __future__ import annotations

import naiad
import orjson


def _deny(request):
    if request.headers.get("x-test-deny") is not None:
        body = orjson.dumps({"error": f"denied by a test hook: {request.path}"})
        return 403, body, "application/json", None
    return None


def _tag(request, status, headers):
    headers["X-Test-Hook"] = f"{request.method} {request.path} {status}"


@naiad.hookimpl
def naiad_register_http_hooks(hooks):
    hooks.request.append(_deny)
    hooks.answer.append(_tag)
