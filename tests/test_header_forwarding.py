"""``--http-header-forward-pattern`` and ``--grpc-header-forward-pattern``: matching headers reach
the model as string request parameters (a Triton python model that answers its parameters),
over both HTTP fronts and gRPC; reserved names are refused with Triton's message."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException
from tritonpy_models import write

CONFIG = """
name: "params"
backend: "python"
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "PARAMS" data_type: TYPE_STRING dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU } ]
parameters { key: "instance_isolation" value: { string_value: "thread" } }
"""

#: answers the request's parameters (JSON, as pb_utils gives them)
MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = np.array([request.parameters().encode()], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PARAMS", text)]))
        return responses
"""

HEADERS = {"my_header_1": "my_value_1", "My_Header_2": 'a "quoted" \\ value', "other": "x"}
WANTED = {"my_header_1": "my_value_1", "my_header_2": 'a "quoted" \\ value'}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("forwarding")
    write(path, "params", MODEL, CONFIG)
    return path


def _http_params(url: str, headers: dict[str, str], query: dict | None = None) -> dict:
    c = httpclient.InferenceServerClient(url)
    try:
        inp = httpclient.InferInput("INPUT0", [1], "FP32")
        inp.set_data_from_numpy(np.ones(1, np.float32))
        # (a copy: tritonclient adds its own headers to the dict it is given)
        result = c.infer("params", [inp], headers=dict(headers), query_params=query or None)
        return json.loads(result.as_numpy("PARAMS")[0])
    finally:
        c.close()


def _grpc_params(url: str, headers: dict[str, str]) -> dict:
    c = grpcclient.InferenceServerClient(url)
    try:
        inp = grpcclient.InferInput("INPUT0", [1], "FP32")
        inp.set_data_from_numpy(np.ones(1, np.float32))
        # gRPC metadata keys are lower case on the wire
        result = c.infer("params", [inp], headers={k.lower(): v for k, v in headers.items()})
        return json.loads(result.as_numpy("PARAMS")[0])
    finally:
        c.close()


def test_matching_headers_become_parameters(repo, server_factory):
    srv = server_factory(
        repo,
        "--http-header-forward-pattern=MY_HEADER.*",
        "--grpc-header-forward-pattern=my_header.*",
    )
    assert _http_params(srv.url, HEADERS) == WANTED  # the lean front
    assert _http_params(srv.url, HEADERS, query={"x": "1"}) == WANTED  # handed to aiohttp
    assert _grpc_params(srv.grpc_url, HEADERS) == WANTED


def test_each_call_forwards_only_its_own_headers(repo, server_factory):
    """Repeated calls of one binary header (HTTP's cached plans, gRPC's) carry their own
    forwarded headers, never an earlier call's."""
    srv = server_factory(
        repo,
        "--http-header-forward-pattern=MY_HEADER.*",
        "--grpc-header-forward-pattern=my_header.*",
    )
    for params in (_http_params, _grpc_params):
        url = srv.url if params is _http_params else srv.grpc_url
        for _ in range(3):  # the first call makes the plan, the next ones use it
            assert params(url, HEADERS) == WANTED
        assert params(url, {}) == {}
        assert params(url, {"my_header_3": "three"}) == {"my_header_3": "three"}
        assert params(url, HEADERS) == WANTED


def test_nothing_is_forwarded_without_the_flag(repo, server_factory):
    srv = server_factory(repo)
    assert _http_params(srv.url, HEADERS) == {}
    assert _grpc_params(srv.grpc_url, HEADERS) == {}


def test_aiohttp_front_forwards_too(repo, server_factory):
    srv = server_factory(repo, "--http-fast-path=false", "--http-header-forward-pattern=^my_")
    assert _http_params(srv.url, HEADERS) == WANTED


@pytest.mark.parametrize("name", ["sequence_id", "priority", "headers", "triton_injected"])
def test_reserved_names_are_refused(repo, server_factory, name):
    srv = server_factory(repo, "--http-header-forward-pattern=.*")
    body = {"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    r = requests.post(
        f"{srv.base}/v2/models/params/infer", json=body, headers={name: "1"}, timeout=30
    )
    assert r.status_code == 400
    assert r.json() == {
        "error": f"Header '{name}' is reserved for Triton usage and cannot be forwarded."
    }
    with pytest.raises(InferenceServerException, match="reserved for Triton usage"):
        _http_params(srv.url, {name: "1"})
    # still serving; with ".*" every header is forwarded, the client's own ones too
    assert _http_params(srv.url, {"x-ok": "1"})["x-ok"] == "1"


def test_bad_pattern_is_refused_at_start(repo, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "naiad", "serve", "--model-repository", str(repo)]
        + ["--http-header-forward-pattern=("],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "invalid --http-header-forward-pattern" in proc.stderr
