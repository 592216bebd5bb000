"""The legacy TRTIS v1 API (``/api/*``) on the V2 port: NV-Status, NV-InferRequest, status."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from google.protobuf import text_format
from httphelpers import raw, simple_inputs
from naiad.legacy_pb import (
    InferRequestHeader,
    InferResponseHeader,
    ModelReadyState,
    ModelRepositoryIndex,
    RequestStatus,
    RequestStatusCode,
    ServerReadyState,
    ServerStatus,
    SharedMemoryStatus,
)

SIMPLE_HEADER = (
    'batch_size: 1 input { name: "INPUT0" } input { name: "INPUT1" } '
    'output { name: "OUTPUT0" } output { name: "OUTPUT1" }'
)


def nv_status(headers) -> RequestStatus:
    return text_format.Parse(headers["NV-Status"], RequestStatus())


def v1_infer(server, model, header, body, path_suffix="", query=""):
    """POST /api/infer/<model>: (status, NV-Status or None, NV-InferResponse or None, body)."""
    if not isinstance(header, str):
        header = text_format.MessageToString(header, as_one_line=True)
    status, headers, payload = raw(
        server,
        "POST",
        f"/api/infer/{model}{path_suffix}{query}",
        body,
        {"NV-InferRequest": header, "Content-Type": "application/octet-stream"},
    )
    st = nv_status(headers) if "NV-Status" in headers else None
    resp = (
        text_format.Parse(headers["NV-InferResponse"], InferResponseHeader())
        if "NV-InferResponse" in headers
        else None
    )
    return status, st, resp, payload


def ok(client):
    a, b, inputs = simple_inputs()
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a + b)


# ---- health, unknown paths, verbs ---------------------------------------------------------------


def test_health(server):
    seen = set()
    for mode in ("live", "ready"):
        status, headers, body = raw(server, "GET", f"/api/health/{mode}")
        assert (status, body) == (200, b"")
        st = nv_status(headers)
        assert st.code == RequestStatusCode.SUCCESS and st.server_id == "triton"
        assert st.msg == "" and "msg:" not in headers["NV-Status"]
        seen.add(st.request_id)
    assert len(seen) == 2 and 0 not in seen  # a server-wide request counter


@pytest.mark.parametrize(
    "method,path,status",
    [
        ("GET", "/api/health/sideways", 400),
        ("GET", "/api/health", 400),
        ("GET", "/api/nothing/here", 400),
        ("GET", "/api", 400),
        ("POST", "/api/health/live", 405),
        ("POST", "/api/status", 405),
        ("GET", "/api/infer/simple", 405),
        ("GET", "/api/modelcontrol/load/simple", 405),
        ("POST", "/api/modelcontrol/reload/simple", 400),
        ("POST", "/api/sharedmemorycontrol/frobnicate", 400),
    ],
)
def test_unknown_paths_and_verbs_are_bare(server, client, method, path, status):
    got, headers, body = raw(server, method, path)
    assert (got, body) == (status, b"")
    assert "NV-Status" not in headers
    ok(client)


# ---- status ---------------------------------------------------------------------------------------


def test_status_forms(server, client):
    ok(client)
    status, headers, body = raw(server, "GET", "/api/status")
    assert status == 200 and nv_status(headers).code == RequestStatusCode.SUCCESS
    assert headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    assert "ready_state: SERVER_READY" in text and "\n" in text  # multi-line DebugString form
    message = text_format.Parse(text, ServerStatus())
    assert message.id == "triton" and message.version and message.uptime_ns > 0
    assert message.ready_state == ServerReadyState.SERVER_READY
    assert {"simple", "simple_string", "simple_identity", "mlp"} <= set(message.model_status)
    simple = message.model_status["simple"]
    assert simple.config.name == "simple" and simple.config.max_batch_size == 8
    version = simple.version_status[1]
    assert version.ready_state == ModelReadyState.MODEL_READY
    assert version.model_inference_count >= 1 and version.model_execution_count >= 1
    assert version.last_inference_timestamp_milliseconds > 0
    assert version.infer_stats[1].success.count >= 1
    assert message.health_stats.success.count >= 0

    status, headers, body = raw(server, "GET", "/api/status/simple?format=binary")
    assert headers["Content-Type"] == "application/octet-stream"
    binary = ServerStatus.FromString(body)
    assert list(binary.model_status) == ["simple"]
    assert binary.status_stats.success.count >= 1  # the first status call was counted

    for path in ("/api/status/simple?format=json", "/api/status/simple"):
        status, headers, body = raw(server, "GET", path, headers={"Accept": "application/json"})
        obj = json.loads(body)
        assert obj["readyState"] == "SERVER_READY"  # protobuf's JSON: lowerCamelCase, enum names
        assert obj["modelStatus"]["simple"]["versionStatus"]["1"]["readyState"] == "MODEL_READY"
        assert isinstance(obj["modelStatus"]["simple"]["config"]["maxBatchSize"], int)


def test_status_of_unknown_model(server):
    status, headers, body = raw(server, "GET", "/api/status/nope")
    assert (status, body) == (400, b"")
    st = nv_status(headers)
    assert st.code == RequestStatusCode.INVALID_ARG
    assert st.msg == "no status available for unknown model 'nope'"


def test_repository_index(server, client):
    status, headers, body = raw(server, "GET", "/api/repository/index?format=binary")
    assert status == 200 and nv_status(headers).code == RequestStatusCode.SUCCESS
    names = [m.name for m in ModelRepositoryIndex.FromString(body).models]
    assert names == sorted({e["name"] for e in client.get_model_repository_index()})
    assert {"mlp", "simple", "simple_identity", "simple_string"} <= set(names)


# ---- inference ----------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["text", "binary"])
def test_infer_simple(server, form):
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    header = SIMPLE_HEADER.replace("batch_size: 1", "batch_size: 2") + " id: 42"
    query = "?format=binary" if form == "binary" else ""
    status, st, resp, body = v1_infer(
        server, "simple", header, a.tobytes() + b.tobytes(), "/1", query
    )
    assert status == 200 and st.code == RequestStatusCode.SUCCESS
    assert (resp.model_name, resp.model_version, resp.batch_size, resp.id) == ("simple", 1, 2, 42)
    assert [o.name for o in resp.output] == ["OUTPUT0", "OUTPUT1"]
    assert list(resp.output[0].raw.dims) == [16] and resp.output[0].raw.batch_byte_size == 128
    np.testing.assert_array_equal(np.frombuffer(body[:128], np.int32).reshape(2, 16), a + b)
    np.testing.assert_array_equal(np.frombuffer(body[128:256], np.int32).reshape(2, 16), a - b)
    trailer = body[256:]
    again = (
        InferResponseHeader.FromString(trailer)
        if form == "binary"
        else text_format.Parse(trailer.decode(), InferResponseHeader())
    )
    assert again == resp


def test_infer_only_listed_outputs_and_classification(server, tmp_path):
    a = np.array([[5, 1, 9, 3] + [0] * 12], dtype=np.int32)
    b = np.zeros((1, 16), dtype=np.int32)
    header = InferRequestHeader(batch_size=1)
    header.input.add(name="INPUT0")
    header.input.add(name="INPUT1")
    out = header.output.add(name="OUTPUT1")
    out.cls.count = 3
    status, st, resp, body = v1_infer(server, "simple", header, a.tobytes() + b.tobytes())
    assert status == 200, st
    assert [o.name for o in resp.output] == ["OUTPUT1"]  # OUTPUT0 was not asked for
    classes = resp.output[0].batch_classes
    assert len(classes) == 1
    assert [(c.idx, c.value) for c in classes[0].cls] == [(2, 9.0), (0, 5.0), (3, 3.0)]
    assert text_format.Parse(body.decode(), InferResponseHeader()) == resp  # no raw bytes


def test_infer_strings(server):
    values = [str(i).encode() for i in range(16)]
    blob = b"".join(len(v).to_bytes(4, "little") + v for v in values)
    ones = b"".join((1).to_bytes(4, "little") + b"1" for _ in range(16))
    header = (
        f'batch_size: 1 input {{ name: "INPUT0" batch_byte_size: {len(blob)} }} '
        f'input {{ name: "INPUT1" batch_byte_size: {len(ones)} }} output {{ name: "OUTPUT0" }}'
    )
    status, st, resp, body = v1_infer(server, "simple_string", header, blob + ones)
    assert status == 200, st
    size = resp.output[0].raw.batch_byte_size
    out, pos = [], 0
    while pos < size:
        n = int.from_bytes(body[pos : pos + 4], "little")
        out.append(int(body[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    assert out == [i + 1 for i in range(16)]


def test_infer_version_beyond_int64(server):
    """A version of thousands of digits was an INTERNAL "internal error: ValueError"."""
    a, b, _ = simple_inputs()
    for version in ("1" * 5000, "9223372036854775808"):
        status, st, _, _ = v1_infer(
            server, "simple", SIMPLE_HEADER, a.tobytes() + b.tobytes(), path_suffix=f"/{version}"
        )
        assert status == 400
        assert st.code == RequestStatusCode.INVALID_ARG
        assert "version should be an integral value > 0" in st.msg


def test_infer_errors(server, client):
    a, b, _ = simple_inputs()
    good = a.tobytes() + b.tobytes()
    cases = [
        (
            "nope",
            SIMPLE_HEADER + " id: 7",
            good,
            RequestStatusCode.UNAVAILABLE,
            "Inference request for unknown model 'nope'",
        ),
        (
            "simple",
            SIMPLE_HEADER,
            good[:100],
            RequestStatusCode.INVALID_ARG,
            "unexpected size for input 'INPUT1'",
        ),
        (
            "simple",
            SIMPLE_HEADER,
            good + b"xx",
            RequestStatusCode.INVALID_ARG,
            "unexpected additional input data for model 'simple'",
        ),
        (
            "simple",
            SIMPLE_HEADER.replace("INPUT1", "EXTRA"),
            good,
            RequestStatusCode.INVALID_ARG,
            "unexpected inference input 'EXTRA' for model 'simple'",
        ),
        (
            "simple",
            SIMPLE_HEADER.replace('"OUTPUT1"', '"NOPE"'),
            good,
            RequestStatusCode.INVALID_ARG,
            "unexpected inference output 'NOPE' for model 'simple'",
        ),
        (
            "simple",
            SIMPLE_HEADER.replace("batch_size: 1", "batch_size: 9"),
            good * 9,
            RequestStatusCode.INVALID_ARG,
            "batch-size must be <= 8 for 'simple'",
        ),
        (
            "simple",
            SIMPLE_HEADER.replace("batch_size: 1", "batch_size: 0"),
            b"",
            RequestStatusCode.INVALID_ARG,
            "batch-size must be >= 1",
        ),
        (
            "simple",
            'batch_size: 1 input { name: "INPUT0" }',
            a.tobytes(),
            RequestStatusCode.INVALID_ARG,
            "expected 2 inputs but got 1 inputs",
        ),
        (
            "simple",
            'batch_size: 1 input { name: "INPUT0" batch_byte_size: 60 } input { name: "INPUT1" }',
            good,
            RequestStatusCode.INVALID_ARG,
            "input byte size mismatch for input 'INPUT0'",
        ),
        (
            "simple_string",
            'batch_size: 1 input { name: "INPUT0" } input { name: "INPUT1" }',
            good,
            RequestStatusCode.INVALID_ARG,
            "'batch_byte_size' must be given for STRING input",
        ),
        (
            "simple_identity",
            'batch_size: 1 input { name: "INPUT0" dims: 1 batch_byte_size: 7 }',
            (1000).to_bytes(4, "little") + b"abc",
            RequestStatusCode.INVALID_ARG,
            "claims 1000 bytes",
        ),
        (
            "simple_identity",
            'batch_size: 1 input { name: "INPUT0" batch_byte_size: 7 }',
            (3).to_bytes(4, "little") + b"abc",
            RequestStatusCode.INVALID_ARG,
            "has variable-size dims [-1]: give its 'dims'",
        ),
    ]
    for model, header, body, code, fragment in cases:
        status, st, resp, payload = v1_infer(server, model, header, body)
        assert status == 400 and payload == b"", (model, header)
        assert st.code == code and fragment in st.msg, (header, st)
        assert resp is not None
    status, st, resp, _ = v1_infer(server, "nope", SIMPLE_HEADER + " id: 7", good)
    assert resp.id == 7 and not resp.output  # the failed response names only the request id
    ok(client)


@pytest.mark.parametrize(
    "header", [None, "batch_size: [", 'input { name: "INPUT0" } bogus_field: 3', "batch_size: -1"]
)
def test_malformed_request_header_is_bare_400(server, client, header):
    headers = {} if header is None else {"NV-InferRequest": header}
    status, got, body = raw(server, "POST", "/api/infer/simple", b"\0" * 128, headers)
    assert (status, body) == (400, b"")
    assert "NV-Status" not in got
    ok(client)


def test_sequence_fields_reach_the_request():
    """correlation_id and the START/END flags become the InferRequest's sequence fields."""
    from naiad.http.legacy_codec import build_request
    from naiad.models import ModelState, ModelVersion
    from naiad.shm import SharedMemoryManager
    from naiad.signature import Signature, TensorSpec

    spec = TensorSpec("INPUT", "INT32", (1,), None)
    sig = Signature("seq", 0, {"INPUT": spec}, {"OUTPUT": spec})
    mv = ModelVersion("seq", 1, ModelState.READY, signature=sig)
    header = InferRequestHeader(
        batch_size=1,
        correlation_id=1001,
        flags=InferRequestHeader.FLAG_SEQUENCE_START | InferRequestHeader.FLAG_SEQUENCE_END,
        id=5,
    )
    header.input.add(name="INPUT")
    lease = SharedMemoryManager().lease()
    req = build_request(header, (7).to_bytes(4, "little"), mv, "seq", -1, lease)
    assert (req.sequence_id, req.sequence_start, req.sequence_end) == (1001, True, True)
    assert req.id == "5" and req.inputs["INPUT"].tolist() == [7]
    header.flags = InferRequestHeader.FLAG_SEQUENCE_END
    req = build_request(header, (7).to_bytes(4, "little"), mv, "seq", -1, lease)
    assert (req.sequence_start, req.sequence_end) == (False, True)


# ---- shared memory and model control ------------------------------------------------------------


def test_shared_memory_control_and_infer(server, client):
    key = f"/naiad-{uuid.uuid4().hex[:8]}-v1"
    handle = shm.create_shared_memory_region("v1", key, 256)
    try:
        a, b, _ = simple_inputs()
        shm.set_shared_memory_region(handle, [a[0], b[0]])
        status, headers, _ = raw(
            server, "POST", f"/api/sharedmemorycontrol/register/v1_region/{key}/0/256"
        )
        assert status == 200 and nv_status(headers).code == RequestStatusCode.SUCCESS
        status, headers, body = raw(server, "GET", "/api/sharedmemorycontrol/status")
        regions = text_format.Parse(body.decode(), SharedMemoryStatus()).shared_memory_region
        assert [
            (r.name, r.system_shared_memory.shared_memory_key, r.byte_size) for r in regions
        ] == [("v1_region", key, 256)]
        assert client.get_system_shared_memory_status()[0]["name"] == "v1_region"  # one manager
        header = (
            'batch_size: 1 input { name: "INPUT0" shared_memory { name: "v1_region" offset: 0 '
            'byte_size: 64 } } input { name: "INPUT1" shared_memory { name: "v1_region" '
            'offset: 64 byte_size: 64 } } output { name: "OUTPUT0" shared_memory { '
            'name: "v1_region" offset: 128 byte_size: 64 } } output { name: "OUTPUT1" }'
        )
        status, st, resp, body = v1_infer(server, "simple", header, b"")
        assert status == 200, st
        assert resp.output[0].raw.batch_byte_size == 64  # described, but not in the body
        np.testing.assert_array_equal(np.frombuffer(body[:64], np.int32), (a - b)[0])
        sums = shm.get_contents_as_numpy(handle, np.int32, [16], offset=128)
        np.testing.assert_array_equal(sums, (a + b)[0])
        status, headers, _ = raw(
            server, "POST", "/api/sharedmemorycontrol/cudaregister/gpu/64/0", b"\0" * 64
        )
        st = nv_status(headers)
        assert status == 400 and st.code == RequestStatusCode.INVALID_ARG
        assert st.msg == "failed to register CUDA shared memory region: 'gpu', GPUs not supported"
        status, headers, _ = raw(server, "POST", "/api/sharedmemorycontrol/unregister/v1_region")
        assert status == 200
        status, headers, _ = raw(server, "POST", "/api/sharedmemorycontrol/unregisterall")
        assert status == 200 and client.get_system_shared_memory_status() == []
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(handle)


def test_model_control_needs_explicit_mode(server):
    status, headers, body = raw(server, "POST", "/api/modelcontrol/unload/simple")
    st = nv_status(headers)
    assert (status, body) == (400, b"") and st.code == RequestStatusCode.UNAVAILABLE
    assert "explicit model load / unload is not allowed" in st.msg


def test_model_control_explicit(server_factory, example_repo):
    srv = server_factory(example_repo, "--model-control-mode=explicit", "--load-model", "simple")
    c = httpclient.InferenceServerClient(srv.url)
    assert not c.is_model_ready("mlp")
    status, headers, _ = raw(srv, "POST", "/api/modelcontrol/load/mlp")
    assert status == 200 and nv_status(headers).code == RequestStatusCode.SUCCESS
    assert c.is_model_ready("mlp")
    status, headers, _ = raw(srv, "POST", "/api/modelcontrol/unload/mlp")
    assert status == 200 and not c.is_model_ready("mlp")
    message = text_format.Parse(_body(srv, "/api/status/mlp"), ServerStatus())
    assert message.model_status["mlp"].version_status[1].ready_state == (
        ModelReadyState.MODEL_UNAVAILABLE
    )
    assert message.model_status["mlp"].version_status[1].ready_state_reason.message == "unloaded"
    status, headers, _ = raw(srv, "POST", "/api/modelcontrol/load/wrong_model_name")
    st = nv_status(headers)
    assert status == 400 and st.code == RequestStatusCode.INTERNAL
    assert "failed to load 'wrong_model_name'" in st.msg
    ok(c)
    c.close()


def _body(srv, path) -> str:
    return raw(srv, "GET", path)[2].decode()
