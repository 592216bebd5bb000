"""docs/openapi.yaml against the route table, and schemathesis fuzzing a running naiad with it.

The fuzzing is bounded: ``FUZZ_EXAMPLES`` cases per operation (positive and negative data,
plus the spec's examples), no shrinking, a deterministic seed, a 10 s timeout per request;
the whole file takes well under a minute. ``NAIAD_FUZZ_EXAMPLES=N`` and ``NAIAD_FUZZ_SEED=S``
run a longer or different search by hand.

What counts as a failure:

- a 5xx other than the documented ones (``ALLOWED_500``: Triton's INTERNAL for unparsable
  request JSON and mistyped fields, shared-memory objects that cannot be opened, a backend
  failing; the 501s and 503s that operations document), any ``internal error: ...`` (a handler
  raised something unexpected), or a v1 ``NV-Status`` with such a message;
- a status code, content type or JSON body that the spec does not describe for the operation;
- a request that hangs (no answer within 10 s) or a server that dies.

Afterwards the server must still answer ``simple`` correctly, and its log must show no
unhandled error.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import requests
import schemathesis
import tritonclient.http as httpclient
import yaml
from conftest import ROOT, start_server
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

SPEC = ROOT / "docs" / "openapi.yaml"
FUZZ_EXAMPLES = int(os.environ.get("NAIAD_FUZZ_EXAMPLES", "25"))
FUZZ_SEED = int(os.environ.get("NAIAD_FUZZ_SEED", "0"))
REQUEST_TIMEOUT = 10

# The legitimate 500s, by operation (method, path template) and message. Anything else in the
# 5xx range must be documented as 501/503 for the operation (status_code_conformance checks).
_PARSE_500 = (
    r"^failed to parse the request JSON buffer",
    r"^Unable to parse '[^']*'",
    r"should be at least \d+ bytes to hold the results$",
    # a backend failed while executing: the ONNX backend's own error, or any other exception
    # as the instance wraps it
    r"^onnx runtime error: ",
    r" in model '[^']*' instance '[^']*': ",
)
ALLOWED_500: dict[tuple[str, str], tuple[str, ...]] = {
    ("POST", "/v2/models/{model}/infer"): _PARSE_500,
    ("POST", "/v2/models/{model}/versions/{version}/infer"): _PARSE_500,
    ("POST", "/v2/systemsharedmemory/region/{region}/register"): (
        r"^Unable to open shared memory region: '",
        r"^Invalid shared memory region: '",
    ),
    ("POST", "/v2/repository/models/{model}/load"): (r"^failed to load '",),
}

schema = schemathesis.openapi.from_path(str(SPEC))
OPERATIONS = {
    f"{op.method.upper()} {op.path}": op for op in (r.ok() for r in schema.get_all_operations())
}


# ---- the spec and the route table ----------------------------------------------------------------


def _spec() -> dict:
    return yaml.safe_load(SPEC.read_text())


def _template(path: str) -> str:
    """aiohttp's ``{name:regex}`` as OpenAPI's ``{name}``."""
    out, i = [], 0
    while i < len(path):
        if path[i] == "{":
            depth, j = 0, i
            while True:  # regexes may hold braces of their own
                depth += {"{": 1, "}": -1}.get(path[j], 0)
                if depth == 0:
                    break
                j += 1
            out.append("{" + path[i + 1 : j].split(":", 1)[0] + "}")
            i = j + 1
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _spec_operations(spec: dict, metrics: bool) -> set[tuple[str, str]]:
    """(METHOD, path) of the spec: the main server's, or (``metrics``) the metrics server's."""
    ops = set()
    for path, item in spec["paths"].items():
        if ("servers" in item) != metrics:
            continue
        ops |= {(m.upper(), path) for m in item if m in _METHODS}
    return ops


def _route_operations(routes) -> set[tuple[str, str]]:
    return {(r.method, _template(r.path)) for r in routes}


def _compare(routes: set[tuple[str, str]], spec_ops: set[tuple[str, str]]) -> None:
    any_method = {path for method, path in routes if method == "*"}
    missing = {(m, p) for m, p in routes if m != "*" and (m, p) not in spec_ops} | {
        ("*", p) for p in any_method if not any(sp == p for _, sp in spec_ops)
    }
    extra = {(m, p) for m, p in spec_ops if (m, p) not in routes and p not in any_method}
    assert not missing, f"routes missing from docs/openapi.yaml: {sorted(missing)}"
    assert not extra, f"operations in docs/openapi.yaml that no route serves: {sorted(extra)}"


def test_every_route_is_in_the_spec_and_back():
    from naiad.http.app import routes

    _compare(_route_operations(routes()), _spec_operations(_spec(), metrics=False))


def test_metrics_route_is_in_the_spec_and_back():
    from naiad.http.metrics import make_metrics_app
    from naiad.metrics import Metrics

    app = make_metrics_app(object.__new__(Metrics))
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    _compare(routes, _spec_operations(_spec(), metrics=True))


def test_template_conversion():
    assert _template("/v2/models/{model}/versions/{version:[0-9]+}") == (
        "/v2/models/{model}/versions/{version}"
    )
    assert _template("/api{tail:(/.*)?}") == "/api{tail}"
    assert _template("/a/{n:[0-9]{1,3}}/b") == "/a/{n}/b"


def test_spec_is_valid_openapi():
    """Loaded by schemathesis (which validates it) with every operation usable."""
    assert len(OPERATIONS) == sum(
        1 for item in _spec()["paths"].values() for m in item if m in _METHODS
    )
    assert _spec()["openapi"].startswith("3.")


# ---- fuzzing --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_server(models, tmp_path_factory):
    """naiad in explicit model control (so load/unload run for real) over the example models."""
    repo = tmp_path_factory.mktemp("fuzz_repo")
    for write in (
        models.write_simple,
        models.write_simple_string,
        models.write_simple_identity,
        models.write_mlp,
        models.write_simple_sequence,
    ):
        write(repo)
    srv = start_server(
        repo,
        "--model-control-mode",
        "explicit",
        "--load-model",
        "*",
        log_dir=tmp_path_factory.mktemp("fuzz_logs"),
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        yield s


def _has_inputs(op) -> bool:
    return bool(list(op.iter_parameters())) or bool(list(op.body))


#: models of the fuzz server: most cases name one of them, so they get past model lookup
MODELS = ("simple", "mlp", "simple_string", "simple_identity", "simple_sequence")


def _fixed_path_parameters(op) -> list[dict[str, str]]:
    """Path parameters to pin: a served model (and version 1), besides random ones. Not for
    load/unload, whose random names keep the served models in place."""
    names = {p.name for p in op.iter_parameters() if p.location.value == "path"}
    if "model" not in names or op.path.startswith(("/v2/repository/", "/api/modelcontrol/")):
        return [{}]
    version = {"version": "1"} if "version" in names else {}
    return [{}] + [{"model": m, **version} for m in MODELS]


def _strategy(op):
    modes = [GenerationMode.POSITIVE]
    if _has_inputs(op):
        modes.append(GenerationMode.NEGATIVE)
    strategies = [
        op.as_strategy(generation_mode=mode, path_parameters=fixed or None)
        for fixed in _fixed_path_parameters(op)
        for mode in modes
    ]
    strategies += op.get_strategies_from_examples()
    return st.one_of(strategies)


def _base_url(srv, op) -> str:
    if op.path == "/metrics":
        return f"http://127.0.0.1:{srv.metrics_port}"
    return srv.base


def check_no_server_error(op, response) -> None:
    """5xx only as documented; no unexpected exception behind any answer."""
    key = (op.method.upper(), op.path)
    status = response.status_code
    nv_status = response.headers.get("NV-Status", "")
    assert 'msg: "internal error:' not in nv_status, f"{key}: {nv_status}"
    if status < 500:
        return
    try:
        message = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        pytest.fail(f"{key}: {status} without a JSON error body: {response.content[:300]!r}")
    assert not message.startswith("internal error:"), f"{key}: {status} {message}"
    if status == 500:
        patterns = ALLOWED_500.get(key, ())
        assert any(re.search(p, message) for p in patterns), f"{key}: undocumented 500: {message}"


FUZZ_FAILURE = (AssertionError, pytest.fail.Exception)


def _response(status: int, body: bytes, headers: dict | None = None) -> requests.Response:
    r = requests.Response()
    r.status_code, r._content = status, body
    r.headers.update(headers or {})
    return r


def test_server_error_check_bites():
    """The check lets the documented 500s through and nothing else."""
    infer = type("Op", (), {"method": "POST", "path": "/v2/models/{model}/infer"})
    meta = type("Op", (), {"method": "GET", "path": "/v2/models/{model}"})
    ok = b'{"error": "failed to parse the request JSON buffer: x"}'
    check_no_server_error(infer, _response(500, ok))
    check_no_server_error(infer, _response(404, b'{"error": "Request for unknown model"}'))
    for op, status, body in [
        (meta, 500, ok),  # documented for infer only
        (infer, 500, b'{"error": "internal error: ValueError: x"}'),
        (infer, 503, b'{"error": "internal error: KeyError: x"}'),
        (infer, 502, b"<html>bad gateway</html>"),
    ]:
        with pytest.raises(FUZZ_FAILURE):
            check_no_server_error(op, _response(status, body))
    legacy = _response(400, b"", {"NV-Status": 'code: INTERNAL msg: "internal error: KeyError"'})
    with pytest.raises(FUZZ_FAILURE):
        check_no_server_error(infer, legacy)


CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_fuzz(label, fuzz_server, session):
    op = OPERATIONS[label]
    base = _base_url(fuzz_server, op)

    @seed(FUZZ_SEED)
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=FUZZ_SEED == 0,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(case=_strategy(op))
    def run(case):
        try:
            response = case.call(base_url=base, session=session, timeout=REQUEST_TIMEOUT)
        except requests.Timeout:
            pytest.fail(f"{label}: no answer in {REQUEST_TIMEOUT} s to {case.as_curl_command()}")
        if label == "POST /v2/logging":  # errors must stay in the log checked at the end
            session.post(base + "/v2/logging", json={"log_error": True}, timeout=REQUEST_TIMEOUT)
        check_no_server_error(op, response)
        case.validate_response(response, checks=CHECKS)

    run()
    assert fuzz_server.process.poll() is None, f"naiad died:\n{fuzz_server.log()[-3000:]}"


# ---- near-valid inference bodies ------------------------------------------------------------------
# schemathesis's random bodies rarely get past input-name checks; these start from valid requests
# of the served models and break one thing at a time, in JSON and in the binary form.

_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_FIELDS = (
    "name",
    "datatype",
    "shape",
    "data",
    "parameters",
    "binary_data_size",
    "shared_memory_region",
    "shared_memory_byte_size",
    "classification",
    "binary_data",
)


def _valid_requests() -> list[tuple[str, dict, dict[str, bytes]]]:
    """(model, JSON request, {input name: wire bytes}) of one correct request per model."""
    row = list(range(16))
    strings = [str(i).encode() for i in row]
    wire = b"".join(len(s).to_bytes(4, "little") + s for s in strings)
    return [
        (
            "simple",
            {
                "inputs": [
                    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": row},
                    {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": row},
                ],
                "outputs": [
                    {"name": "OUTPUT0"},
                    {"name": "OUTPUT1", "parameters": {"binary_data": True}},
                ],
            },
            {
                "INPUT0": np.arange(16, dtype=np.int32).tobytes(),
                "INPUT1": np.ones(16, np.int32).tobytes(),
            },
        ),
        (
            "simple_string",
            {
                "inputs": [
                    {
                        "name": "INPUT0",
                        "datatype": "BYTES",
                        "shape": [1, 16],
                        "data": [s.decode() for s in strings],
                    },
                    {"name": "INPUT1", "datatype": "BYTES", "shape": [1, 16], "data": ["1"] * 16},
                ]
            },
            {"INPUT0": wire, "INPUT1": wire},
        ),
        (
            "simple_identity",
            {
                "inputs": [
                    {
                        "name": "INPUT0",
                        "datatype": "BYTES",
                        "shape": [1, 3],
                        "data": ["a", "", "c"],
                    },
                ]
            },
            {"INPUT0": b"\x01\x00\x00\x00a\x00\x00\x00\x00\x01\x00\x00\x00c"},
        ),
        (
            "mlp",
            {
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [2, 16], "data": [0.5] * 32},
                ],
                "parameters": {"binary_data_output": True},
            },
            {"input": np.full(32, 0.5, np.float32).tobytes()},
        ),
        (
            "simple_sequence",
            {
                "parameters": {"sequence_id": 7, "sequence_start": True, "sequence_end": True},
                "inputs": [{"name": "INPUT", "datatype": "INT32", "shape": [1, 1], "data": [3]}],
            },
            {"INPUT": np.int32(3).tobytes()},
        ),
    ]


VALID = _valid_requests()


@st.composite
def near_valid_infer(draw):
    """(model, headers, body): a valid request with one part broken."""
    model, request, blobs = draw(st.sampled_from(VALID))
    request = json.loads(json.dumps(request))
    binary = draw(st.booleans())
    tail = b""
    if binary:  # the binary tensor data extension: JSON header + the inputs' bytes
        for item in request["inputs"]:
            del item["data"]
            item["parameters"] = {"binary_data_size": len(blobs[item["name"]])}
            tail += blobs[item["name"]]
    target = draw(st.sampled_from(["request", "input", "output", "tail"]))
    if target == "request":
        key = draw(st.sampled_from(["id", "inputs", "outputs", "parameters"]))
        request[key] = draw(_JSON_VALUES)
    elif target in ("input", "output"):
        items = request.setdefault(target + "s", [{"name": "OUTPUT0"}])
        item = draw(st.sampled_from(items))
        key = draw(st.sampled_from(_FIELDS))
        if key in _FIELDS[5:] or (key == "parameters" and draw(st.booleans())):
            item.setdefault("parameters", {})[key if key in _FIELDS[5:] else "x"] = draw(
                _JSON_VALUES
            )
        elif key in item and draw(st.booleans()):
            del item[key]
        else:
            item[key] = draw(_JSON_VALUES)
    else:
        cut = draw(st.integers(min_value=0, max_value=len(tail)))
        tail = tail[:cut] + draw(st.binary(max_size=12))
    header = json.dumps(request).encode()
    headers = {"Content-Type": "application/octet-stream" if binary else "application/json"}
    if binary:
        length = len(header) + draw(st.sampled_from([0, 0, 0, -1, 1, -len(header)]))
        headers["Inference-Header-Content-Length"] = str(length)
    return model, headers, header + tail


def test_fuzz_near_valid_infer_bodies(fuzz_server, session):
    infer = ("POST", "/v2/models/{model}/infer")
    op = type("Op", (), {"method": infer[0], "path": infer[1]})

    @seed(FUZZ_SEED)
    @settings(
        max_examples=FUZZ_EXAMPLES * 25,
        deadline=None,
        database=None,
        derandomize=FUZZ_SEED == 0,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(near_valid_infer())
    def run(args):
        model, headers, body = args
        try:
            response = session.post(
                f"{fuzz_server.base}/v2/models/{model}/infer",
                data=body,
                headers=headers,
                timeout=REQUEST_TIMEOUT,
            )
        except requests.Timeout:
            pytest.fail(f"no answer in {REQUEST_TIMEOUT} s to {model} {headers} {body[:300]!r}")
        check_no_server_error(op, response)
        if response.status_code != 200:
            assert set(response.json()) == {"error"}

    run()
    assert fuzz_server.process.poll() is None, f"naiad died:\n{fuzz_server.log()[-3000:]}"


def test_still_serves_after_fuzzing(fuzz_server):
    """Runs last (file order): simple answers correctly, nothing went unhandled."""
    assert fuzz_server.process.poll() is None
    client = httpclient.InferenceServerClient(fuzz_server.url)
    try:
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        b = np.full((1, 16), 3, dtype=np.int32)
        inputs = [
            httpclient.InferInput("INPUT0", [1, 16], "INT32"),
            httpclient.InferInput("INPUT1", [1, 16], "INT32"),
        ]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b, binary_data=False)
        result = client.infer("simple", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        assert client.is_server_live()
        assert client.get_system_shared_memory_status() == []
    finally:
        client.close()
    log = fuzz_server.log()
    assert "unhandled error in" not in log, log[log.find("unhandled error in") - 200 :][:3000]
