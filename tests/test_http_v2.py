"""The V2 protocol end to end: the real server, real ONNX models, the real tritonclient."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest
import tritonclient.http as httpclient
from httphelpers import raw, simple_inputs
from tritonclient.utils import InferenceServerException

# ---- health and metadata ------------------------------------------------------------------------


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "triton"
    assert "binary_tensor_data" in meta["extensions"]
    assert "statistics" in meta["extensions"]


def test_query_params_are_ignored(client):
    assert client.is_server_live(query_params={"test_1": 1, "test_2": 2})
    assert client.is_model_ready("simple", query_params={"test_1": 1})


def test_model_metadata(client):
    meta = client.get_model_metadata("simple")
    assert meta["name"] == "simple"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
        {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]},
    ]
    assert {o["name"] for o in meta["outputs"]} == {"OUTPUT0", "OUTPUT1"}
    assert client.get_model_metadata("simple", "1")["versions"] == ["1"]


def test_model_config_is_tritons_json(client):
    config = client.get_model_config("simple")
    assert config["name"] == "simple"
    assert config["max_batch_size"] == 8
    assert config["platform"] == "onnxruntime_onnx"
    assert config["backend"] == "onnxruntime"
    assert config["input"][0]["data_type"] == "TYPE_INT32"
    assert config["input"][0]["dims"] == [16]
    assert config["input"][0]["format"] == "FORMAT_NONE"
    assert config["input"][0]["is_shape_tensor"] is False
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["instance_group"][0]["count"] >= 1


def test_unknown_model_and_version(client, server):
    with pytest.raises(InferenceServerException, match="Request for unknown model"):
        client.get_model_metadata("wrong_model_name")
    assert not client.is_model_ready("wrong_model_name")
    assert not client.is_model_ready("simple", "7")
    status, _, body = raw(server, "GET", "/v2/models/simple/versions/7")
    assert status == 404
    assert "version 7 is not found" in json.loads(body)["error"]
    status, _, body = raw(server, "GET", "/v2/models/nope/config")
    assert status == 404 and json.loads(body)["error"]
    status, _, body = raw(server, "GET", "/v2/not/a/route")
    assert status == 404 and json.loads(body) == {"error": "Not Found"}


@pytest.mark.parametrize("version", ["9223372036854775808", "1" * 5000, "0" * 30 + "1" * 25])
def test_version_beyond_int64_is_400(client, server, version):
    """Found by tests/test_openapi_fuzz.py: a version of thousands of digits was a 500 (Python's
    int() limit); Triton's std::stol refuses anything beyond int64 as INVALID_ARG."""
    for path in ("", "/ready", "/config", "/stats"):
        status, _, body = raw(server, "GET", f"/v2/models/simple/versions/{version}{path}")
        assert status == 400, (path, body[:200])
        message = json.loads(body)["error"]
        assert message.startswith("failed to get model version from specified version string")
    status, _, body = raw(server, "POST", f"/v2/models/simple/versions/{version}/infer", b"{}")
    assert status == 400
    assert "version should be an integral value > 0" in json.loads(body)["error"]
    # leading zeros still name the version
    status, _, _ = raw(server, "GET", "/v2/models/simple/versions/" + "0" * 40 + "1")
    assert status == 200
    status, _, _ = raw(server, "GET", "/v2/models/simple/versions/9223372036854775807")
    assert status == 404


def test_json_float_for_integer_tensor_is_refused(server):
    """1.5 for an INT32 input was silently truncated to 1 (numpy); Triton refuses it."""

    def body(value):
        return json.dumps(
            {
                "inputs": [
                    {
                        "name": "INPUT0",
                        "datatype": "INT32",
                        "shape": [1, 16],
                        "data": [value] + [0] * 15,
                    },
                    {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
                ]
            }
        ).encode()

    for value in (1.5, 1.0, 1e300):
        status, _, payload = raw(server, "POST", "/v2/models/simple/infer", body(value))
        assert status == 400, payload
        assert "must hold integers" in json.loads(payload)["error"]
    status, _, payload = raw(server, "POST", "/v2/models/simple/infer", body(7))
    assert status == 200
    assert json.loads(payload)["outputs"][0]["data"][0] == 8


# ---- inference ----------------------------------------------------------------------------------


@pytest.mark.parametrize("binary0,binary1", [(True, True), (False, True), (False, False)])
def test_infer_simple(client, binary0, binary1):
    a, b, inputs = simple_inputs(binary0, binary1)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]
    result = client.infer("simple", inputs, outputs=outputs, request_id="7")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response["id"] == "7"
    assert response["model_version"] == "1"


def test_infer_all_outputs_binary_and_versions(client):
    a, b, inputs = simple_inputs(batch=3)
    result = client.infer("simple", inputs, model_version="1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    for out in result.get_response()["outputs"]:
        assert out["parameters"]["binary_data_size"] == 3 * 16 * 4


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compression_both_ways(client, algorithm):
    a, b, inputs = simple_inputs()
    result = client.infer(
        "simple",
        inputs,
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


def test_unsupported_content_encoding(server):
    body = json.dumps({"inputs": []}).encode()
    status, headers, payload = raw(
        server, "POST", "/v2/models/simple/infer", body, {"Content-Encoding": "br"}
    )
    assert status == 501
    assert "Unsupported compression type" in json.loads(payload)["error"]


def test_compressed_body_is_decompressed(server):
    req = {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
        ]
    }
    for encoding, data in (
        ("gzip", gzip.compress(json.dumps(req).encode())),
        ("deflate", zlib.compress(json.dumps(req).encode())),
    ):
        status, _, body = raw(
            server, "POST", "/v2/models/simple/infer", data, {"Content-Encoding": encoding}
        )
        assert status == 200, body
        out = {o["name"]: o for o in json.loads(body)["outputs"]}
        assert out["OUTPUT0"]["data"] == [i + 1 for i in range(16)]


def test_bytes_tensors(client):
    in0 = np.array([str(i).encode() for i in range(16)], dtype=np.object_).reshape(1, 16)
    in1 = np.array([b"1"] * 16, dtype=np.object_).reshape(1, 16)
    inputs = [
        httpclient.InferInput("INPUT0", [1, 16], "BYTES"),
        httpclient.InferInput("INPUT1", [1, 16], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(in0, binary_data=True)
    inputs[1].set_data_from_numpy(in1, binary_data=False)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]
    result = client.infer("simple_string", inputs, outputs=outputs)
    sums = [int(x) for x in result.as_numpy("OUTPUT0").reshape(-1)]
    diffs = [int(x) for x in result.as_numpy("OUTPUT1").reshape(-1)]
    assert sums == [i + 1 for i in range(16)]
    assert diffs == [i - 1 for i in range(16)]


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_identity_with_nul_and_blobs(client, binary):
    texts = np.array(["he\x00llo"] * 16, dtype=np.object_).reshape(1, 16)
    blobs = np.array([bytes([0, 1, 2, 3])] * 16, dtype=np.object_).reshape(1, 16)
    for data in (texts, blobs):
        inp = httpclient.InferInput("INPUT0", [1, 16], "BYTES")
        inp.set_data_from_numpy(data, binary_data=binary)
        out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
        result = client.infer("simple_identity", [inp], outputs=[out])
        got = result.as_numpy("OUTPUT0").reshape(-1)
        want = [x.encode() if isinstance(x, str) else x for x in data.reshape(-1)]
        assert [bytes(g) if not isinstance(g, str) else g.encode() for g in got] == want


def test_mlp_matches_numpy(client, models):
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    inp = httpclient.InferInput("input", [4, 16], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp])
    np.testing.assert_allclose(result.as_numpy("output"), models.mlp_numpy(x), rtol=1e-5, atol=1e-5)


async def test_aio_client(server):
    import tritonclient.http.aio as aioclient

    async with aioclient.InferenceServerClient(server.url) as c:
        assert await c.is_server_live()
        assert (await c.get_model_metadata("simple"))["name"] == "simple"
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        i0 = aioclient.InferInput("INPUT0", [1, 16], "INT32")
        i0.set_data_from_numpy(a)
        i1 = aioclient.InferInput("INPUT1", [1, 16], "INT32")
        i1.set_data_from_numpy(a)
        result = await c.infer("simple", [i0, i1])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)
        stats = await c.get_inference_statistics("simple")
        assert len(stats["model_stats"]) == 1


def test_statistics_count_requests(client):
    before = client.get_inference_statistics("simple")["model_stats"][0]
    for _ in range(3):
        _, _, inputs = simple_inputs(batch=2)
        client.infer("simple", inputs)
    after = client.get_inference_statistics("simple")["model_stats"][0]
    assert after["name"] == "simple" and after["version"] == "1"
    s0, s1 = before["inference_stats"], after["inference_stats"]
    assert s1["success"]["count"] - s0["success"]["count"] == 3
    assert after["inference_count"] - before["inference_count"] == 6
    assert after["execution_count"] - before["execution_count"] == 3
    assert s1["compute_infer"]["ns"] > s0["compute_infer"]["ns"]
    assert set(s1) == {
        "success",
        "fail",
        "queue",
        "compute_input",
        "compute_infer",
        "compute_output",
        "cache_hit",
        "cache_miss",
    }
    sizes = {b["batch_size"] for b in after["batch_stats"]}
    assert 2 in sizes
    all_stats = client.get_inference_statistics()
    assert {s["name"] for s in all_stats["model_stats"]} >= {"simple", "mlp"}


def test_raw_binary_request(server):
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    status, headers, body = raw(
        server,
        "POST",
        "/v2/models/mlp/infer",
        x.tobytes(),
        {"Inference-Header-Content-Length": "0"},
    )
    assert status == 200, body
    n = int(headers["Inference-Header-Content-Length"])
    head = json.loads(body[:n])
    assert head["outputs"][0]["shape"] == [1, 16]
    assert len(body) - n == 64


def test_repository_index(client):
    index = client.get_model_repository_index()
    by_name = {e["name"]: e for e in index}
    assert by_name["simple"]["state"] == "READY"
    assert by_name["simple"]["version"] == "1"


def _identity_repo(tmp_path, rank: int = 1):
    """An ONNX Identity over one FP32 tensor of ``rank`` dimensions of any size
    (``big_identity``)."""
    import onnx
    from onnx import TensorProto, helper

    repo = tmp_path / "repo"
    (repo / "big_identity" / "1").mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["Y"])],
        "big_identity",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [f"d{i}" for i in range(rank)])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [f"d{i}" for i in range(rank)])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, repo / "big_identity" / "1" / "model.onnx")
    dims = ", ".join(["-1"] * rank)
    (repo / "big_identity" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        f'input [{{ name: "X" data_type: TYPE_FP32 dims: [ {dims} ] }}]\n'
        f'output [{{ name: "Y" data_type: TYPE_FP32 dims: [ {dims} ] }}]\n'
    )
    return repo


def test_large_json_tensor_round_trip(server_factory, tmp_path):
    """A JSON body big enough to be parsed off the event loop gives exact results."""
    repo = _identity_repo(tmp_path)
    srv = server_factory(repo)
    c = httpclient.InferenceServerClient(srv.url, network_timeout=60)
    x = np.random.default_rng(5).standard_normal(150_000).astype(np.float32)
    inp = httpclient.InferInput("X", [x.size], "FP32")
    inp.set_data_from_numpy(x, binary_data=False)  # ~3 MB of JSON numbers
    out = httpclient.InferRequestedOutput("Y", binary_data=False)
    result = c.infer("big_identity", [inp], outputs=[out])
    np.testing.assert_array_equal(result.as_numpy("Y"), x)
    assert c.is_server_live()
    c.close()


def test_zero_element_tensor_round_trip(server_factory, tmp_path):
    """A tensor with no elements (shape [2, 0]) is a valid request and answer, as in Triton:
    binary and JSON over HTTP, and over gRPC."""
    import tritonclient.grpc as grpcclient

    srv = server_factory(_identity_repo(tmp_path, rank=2))
    empty = np.zeros((2, 0), np.float32)
    c = httpclient.InferenceServerClient(srv.url)
    for binary in (True, False):
        inp = httpclient.InferInput("X", [2, 0], "FP32")
        inp.set_data_from_numpy(empty, binary_data=binary)
        out = httpclient.InferRequestedOutput("Y", binary_data=binary)
        for _ in range(2):  # the second binary call takes the cached plan
            result = c.infer("big_identity", [inp], outputs=[out])
            assert result.as_numpy("Y").shape == (2, 0)
    c.close()
    g = grpcclient.InferenceServerClient(srv.grpc_url)
    inp = grpcclient.InferInput("X", [2, 0], "FP32")
    inp.set_data_from_numpy(empty)
    for _ in range(2):
        assert g.infer("big_identity", [inp]).as_numpy("Y").shape == (2, 0)
    g.close()
