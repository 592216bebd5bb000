"""The HTTP edge: request and answer hooks (``naiad_register_http_hooks``) on both fronts,
``--http-restricted-api``, the plan cache, and the endpoint table's two lookups agreeing.

The hooks live in one place (:class:`naiad.http.edge.HttpHooks`), and both the lean front and
the aiohttp app run them: ``/v2/health/ready`` and inference are answered by the lean front,
``/v2/repository/index``, a query string, an unknown path and the legacy API by aiohttp.
"""

from __future__ import annotations

import gc
import http.client
import json

import numpy as np
import pytest
from conftest import start_server


@pytest.fixture(scope="module")
def hooked(example_repo, tmp_path_factory):
    srv = start_server(
        example_repo,
        "--plugin",
        "naiad_test_http_hooks",
        log_dir=tmp_path_factory.mktemp("hooklogs"),
    )
    yield srv
    srv.stop()


def _call(srv, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_lean_and_aiohttp_routes_are_the_ones_the_test_means():
    """Which front answers what comes from the endpoint table (its ``lean`` flags)."""
    from naiad.http.endpoints import ENDPOINTS
    from naiad.http.lean_head import NOT_OURS, LeanRoutes

    routes = LeanRoutes(ENDPOINTS)
    assert routes.find(b"GET", b"/v2/health/ready") is not NOT_OURS
    endpoint, params = routes.find(b"POST", b"/v2/models/simple/versions/1/infer")
    assert endpoint.lean and params == {"model": "simple", "version": "1"}
    assert routes.find(b"POST", b"/v2/repository/index") is NOT_OURS
    assert routes.find(b"GET", b"/v2/health/ready?x=1") is NOT_OURS
    assert routes.find(b"GET", b"/api/health/live") is NOT_OURS


@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("GET", "/v2/health/ready", b"", 200),  # the lean front
        ("GET", "/v2/models/simple/config", b"", 200),  # the lean front
        ("GET", "/v2/models/nope/config", b"", 404),  # the lean front, an error answer
        ("GET", "/v2/health/ready?x=1", b"", 200),  # handed to aiohttp (a query string)
        ("POST", "/v2/repository/index", b"{}", 200),  # aiohttp only
        ("GET", "/v2/nothing/here", b"", 404),  # aiohttp's router
        ("GET", "/api/health/live", b"", 200),  # the legacy API (its own aiohttp handler)
    ],
)
def test_answer_hook_runs_on_both_fronts(hooked, method, path, body, status):
    got, headers, _ = _call(hooked, method, path, body)
    assert got == status
    assert headers["X-Test-Hook"] == f"{method} {path.partition('?')[0]} {status}"


def test_answer_hook_runs_on_inference(hooked):
    a = np.arange(16, dtype=np.int32)
    inputs = [
        {"name": n, "datatype": "INT32", "shape": [1, 16], "data": a.tolist()}
        for n in ("INPUT0", "INPUT1")
    ]
    path = "/v2/models/simple/infer"
    status, headers, body = _call(hooked, "POST", path, json.dumps({"inputs": inputs}).encode())
    assert status == 200
    assert headers["X-Test-Hook"] == f"POST {path} 200"
    out = {o["name"]: o["data"] for o in json.loads(body)["outputs"]}
    assert out["OUTPUT0"] == (2 * a).tolist()


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("GET", "/v2/health/ready", b""),  # the lean front
        ("POST", "/v2/models/simple/infer", b"{}"),  # the lean front, before the body is used
        ("POST", "/v2/repository/index", b"{}"),  # aiohttp
        ("GET", "/api/status", b""),  # the legacy API
    ],
)
def test_request_hook_answers_instead_of_the_handler(hooked, method, path, body):
    status, headers, answer = _call(hooked, method, path, body, {"X-Test-Deny": "1"})
    assert status == 403
    assert json.loads(answer) == {"error": f"denied by a test hook: {path}"}
    assert headers["X-Test-Hook"] == f"{method} {path} 403"
    # and the server goes on serving
    assert _call(hooked, "GET", "/v2/health/ready")[0] == 200


def test_plan_cache_is_per_version_and_goes_with_it():
    """The edge's binary-header plans are held per model version object, weakly."""
    from naiad.plans import PlanCache
    from naiad.registry import ModelVersion

    cache = PlanCache()
    old, new = ModelVersion("m", 1), ModelVersion("m", 1)
    cache.of(old)[b"header"] = object()  # type: ignore[assignment]
    assert cache.of(old) and not cache.of(new)  # a reloaded version starts empty
    assert len(cache) == 2
    del old
    gc.collect()
    assert len(cache) == 1


# ---- --http-restricted-api: a request hook of the edge ------------------------------------------


@pytest.fixture(scope="module")
def restricted(example_repo, tmp_path_factory):
    srv = start_server(
        example_repo,
        "--http-restricted-api=health,metadata:admin-key=admin-value",
        "--http-restricted-api=inference:infer-key=infer-value",
        log_dir=tmp_path_factory.mktemp("restrictedlogs"),
    )
    yield srv
    srv.stop()


@pytest.mark.parametrize(
    "method, path, header",
    [
        ("GET", "/v2/health/ready", "admin-key"),  # the lean front
        ("GET", "/v2/models/simple/ready", "admin-key"),  # model readiness is "health"
        ("GET", "/v2", "admin-key"),  # metadata, the lean front
        ("GET", "/v2/health/live?x=1", "admin-key"),  # handed to aiohttp
        ("POST", "/v2/models/simple/generate", "infer-key"),  # aiohttp only
    ],
)
def test_restricted_api_on_both_fronts(restricted, method, path, header):
    status, _, body = _call(restricted, method, path, b"{}" if method == "POST" else b"")
    assert status == 403
    assert json.loads(body) == {"error": f"This API is restricted, expecting header '{header}'"}
    value = header.replace("key", "value")
    status, _, _ = _call(restricted, method, path, b"", {header: "wrong"})
    assert status == 403
    if method == "GET":
        assert _call(restricted, method, path, b"", {header.upper(): value})[0] == 200


def test_restricted_inference_with_tritonclient(restricted):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    c = httpclient.InferenceServerClient(restricted.url)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for i in inputs:
        i.set_data_from_numpy(a)
    with pytest.raises(InferenceServerException, match="expecting header 'infer-key'"):
        c.infer("simple", inputs)
    out = c.infer("simple", inputs, headers={"infer-key": "infer-value"})
    np.testing.assert_array_equal(out.as_numpy("OUTPUT0"), 2 * a)
    # categories not named stay open
    assert _call(restricted, "GET", "/v2/models/simple/config")[0] == 200
    assert _call(restricted, "POST", "/v2/repository/index", b"{}")[0] == 200
    c.close()


@pytest.mark.parametrize(
    "value, message",
    [
        ("bogus:a=b", "unknown restricted api 'bogus'"),
        ("health", "option format is"),
        ("health:a=b,c", None),  # a value may hold a comma
    ],
)
def test_restricted_api_flag_is_checked(value, message):
    from naiad.http.restricted import parse_restricted_api

    if message is None:
        assert parse_restricted_api([value]) == {"health": ("a", "b,c")}
        return
    with pytest.raises(ValueError, match=message):
        parse_restricted_api([value])
    with pytest.raises(ValueError, match="multiple config groups"):
        parse_restricted_api(["health:a=b", "health,trace:c=d"])


# ---- the endpoint table: the lean front's lookups agree with aiohttp's routing ------------------


def _concrete(template: str, model: str = "m") -> str:
    return template.replace("{model}", model).replace("{version:[0-9]+}", "3")


def test_lean_lookup_agrees_with_aiohttp_routing():
    """For every lean entry (and a model called ``stats``), the lean front's lookup and the
    aiohttp router built from the same table pick the same entry."""
    import asyncio
    import re

    from aiohttp.test_utils import make_mocked_request
    from naiad.http.app import make_app
    from naiad.http.endpoints import ENDPOINTS
    from naiad.http.lean_head import LeanRoutes

    app = make_app(None)  # routing only: no handler runs
    routes = LeanRoutes(ENDPOINTS)
    lean = [e for e in ENDPOINTS if e.lean]
    assert {e.path for e in lean} >= {"/v2/health/ready", "/v2/models/{model}/infer"}
    checked = 0
    for e in lean:
        for model in ("m", "stats"):
            path = _concrete(e.path, model)
            found = routes.find(e.method.encode(), path.encode())
            if path == "/v2/models/stats" and e.path == "/v2/models/{model}":
                continue  # the fixed all-models statistics route, in both (checked below)
            assert found[0] is e, path
            match = asyncio.run(app.router.resolve(make_mocked_request(e.method, path, app=app)))
            assert match.route.resource.canonical == re.sub(r":[^}]+", "", e.path), path
            checked += 1
    assert checked == 2 * len(lean) - 1  # every entry twice, but the one skipped
    endpoint, _ = routes.find(b"GET", b"/v2/models/stats")
    assert endpoint.path == "/v2/models/stats"
