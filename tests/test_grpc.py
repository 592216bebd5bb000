"""Triton's GRPCInferenceService through the real ``tritonclient.grpc`` (sync and asyncio): every
unary RPC, Triton's status codes and messages, and the server serving on after bad input."""

from __future__ import annotations

import asyncio
import json
import queue
import uuid

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2 as tpb
from tritonclient.grpc import service_pb2_grpc as tstub
from tritonclient.utils import InferenceServerException

MAX = 2**31 - 1


@pytest.fixture
def stub(server):
    """tritonclient's raw stub, for messages its client class never sends."""
    channel = grpc.insecure_channel(
        server.grpc_url,
        options=[("grpc.max_send_message_length", MAX), ("grpc.max_receive_message_length", MAX)],
    )
    yield tstub.GRPCInferenceServiceStub(channel)
    channel.close()


def simple_inputs(batch=1, datatype="INT32"):
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    b = np.full((batch, 16), -1, dtype=np.int32)
    inputs = [
        grpcclient.InferInput("INPUT0", [batch, 16], datatype),
        grpcclient.InferInput("INPUT1", [batch, 16], datatype),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return a, b, inputs


def ok(gc):
    a, b, inputs = simple_inputs()
    np.testing.assert_array_equal(gc.infer("simple", inputs).as_numpy("OUTPUT0"), a + b)


def error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def raw_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# ---- health and metadata (simple_grpc_health_metadata.py) ---------------------------------------


def test_health_and_metadata(gc):
    headers = {"test": "1", "dummy": "2"}
    assert gc.is_server_live(headers=headers)
    assert gc.is_server_ready(headers=headers)
    assert gc.is_model_ready("simple", headers=headers)
    assert gc.is_model_ready("simple", "1")
    assert not gc.is_model_ready("simple", "7")
    assert not gc.is_model_ready("wrong_model_name")
    meta = gc.get_server_metadata(headers=headers)
    assert meta.name == "triton"
    assert "model_repository" in meta.extensions
    model = gc.get_model_metadata("simple", headers=headers)
    assert model.name == "simple" and list(model.versions) == ["1"]
    assert model.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("INPUT0", "INT32", [-1, 16]),
        ("INPUT1", "INT32", [-1, 16]),
    ]
    as_json = gc.get_model_metadata("simple", as_json=True)
    assert as_json["outputs"][1]["name"] == "OUTPUT1"
    e = error(lambda: gc.get_model_metadata("wrong_model_name"))
    assert e.status() == "StatusCode.NOT_FOUND"
    assert "Request for unknown model: 'wrong_model_name' is not found" in e.message()


def test_version_strings(gc):
    e = error(lambda: gc.is_model_ready("simple", "abc"))
    assert e.status() == "StatusCode.INVALID_ARGUMENT"
    assert "failed to get model version from specified version string 'abc'" in e.message()
    e = error(lambda: gc.get_model_metadata("simple", "-1"))
    assert "invalid model version specified '-1'" in e.message()
    e = error(lambda: gc.get_model_config("simple", "99"))
    assert e.status() == "StatusCode.NOT_FOUND"


def test_grpc_health_check(server):
    from naiad.grpc import health_pb2, health_service_pb2_grpc

    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = health_service_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(service="anything"))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_model_config(gc):
    config = gc.get_model_config("simple").config
    assert config.name == "simple" and config.max_batch_size == 8
    assert [i.name for i in config.input] == ["INPUT0", "INPUT1"]
    assert gc.get_model_config("simple", as_json=True)["config"]["platform"] == "onnxruntime_onnx"
    e = error(lambda: gc.get_model_config("nope"))
    assert e.status() == "StatusCode.NOT_FOUND"


# ---- inference (simple_grpc_infer_client.py, simple_grpc_string_infer_client.py) ----------------


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_infer_simple(gc, compression):
    a, b, inputs = simple_inputs()
    outputs = [
        grpcclient.InferRequestedOutput("OUTPUT0"),
        grpcclient.InferRequestedOutput("OUTPUT1"),
    ]
    result = gc.infer(
        "simple",
        inputs,
        outputs=outputs,
        request_id="r1",
        headers={"test": "1"},
        compression_algorithm=compression,
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response.model_name == "simple" and response.model_version == "1"
    assert response.id == "r1"
    assert len(response.raw_output_contents) == 2


def test_infer_without_outputs_and_one_output(gc):
    a, b, inputs = simple_inputs(batch=3)
    result = gc.infer("simple", inputs, model_version="1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    only = gc.infer("simple", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert only.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(only.as_numpy("OUTPUT1"), a - b)


def test_strings_with_nul_bytes(gc):
    data = np.array([[b"he\x00llo", b"", "w\u00f6rld".encode()]], dtype=np.object_)
    inp = grpcclient.InferInput("INPUT0", [1, 3], "BYTES")
    inp.set_data_from_numpy(data)
    result = gc.infer("simple_identity", [inp])
    assert result.as_numpy("OUTPUT0").tolist() == data.tolist()
    numbers = np.array([[str(i).encode() for i in range(16)]], dtype=np.object_)
    ones = np.array([[b"1"] * 16], dtype=np.object_)
    inputs = [grpcclient.InferInput(f"INPUT{i}", [1, 16], "BYTES") for i in (0, 1)]
    inputs[0].set_data_from_numpy(numbers)
    inputs[1].set_data_from_numpy(ones)
    out = gc.infer("simple_string", inputs).as_numpy("OUTPUT0")
    assert [int(x) for x in out.reshape(-1)] == [i + 1 for i in range(16)]


def test_messages_over_4_mib_both_ways(gc):
    big = np.array([[b"x" * (9 << 20)]], dtype=np.object_)
    inp = grpcclient.InferInput("INPUT0", [1, 1], "BYTES")
    inp.set_data_from_numpy(big)
    assert gc.infer("simple_identity", [inp]).as_numpy("OUTPUT0")[0, 0] == big[0, 0]


def test_classification(gc, models):
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    inp = grpcclient.InferInput("input", [2, 16], "FP32")
    inp.set_data_from_numpy(x)
    result = gc.infer(
        "mlp", [inp], outputs=[grpcclient.InferRequestedOutput("output", class_count=3)]
    )
    top = result.as_numpy("output")
    assert top.shape == (2, 3)
    want = models.mlp_numpy(x)
    for row, expected in zip(top, want, strict=True):
        indices = [int(item.decode().split(":")[1]) for item in row]
        assert indices == list(np.argsort(-expected, kind="stable")[:3])


def test_async_infer_callback_and_statistics(gc):
    before = gc.get_inference_statistics("simple").model_stats[0].inference_stats.success.count
    done: queue.Queue = queue.Queue()
    a, b, inputs = simple_inputs()
    for _ in range(4):
        gc.async_infer("simple", inputs, lambda result, error: done.put((result, error)))
    for _ in range(4):
        result, err = done.get(timeout=30)
        assert err is None
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    stats = gc.get_inference_statistics("simple")
    assert len(stats.model_stats) == 1
    entry = stats.model_stats[0]
    assert entry.name == "simple" and entry.version == "1"
    assert entry.inference_stats.success.count >= before + 4
    assert entry.inference_stats.success.ns > 0
    everything = gc.get_inference_statistics(as_json=True)
    assert {s["name"] for s in everything["model_stats"]} >= {"simple", "mlp"}
    e = error(lambda: gc.get_inference_statistics("nope"))
    assert e.status() == "StatusCode.INVALID_ARGUMENT"
    assert "requested model 'nope' is not available" in e.message()


async def test_aio_client(server):
    async with aioclient.InferenceServerClient(server.grpc_url) as c:
        assert await c.is_server_live()
        assert await c.is_model_ready("simple")
        a, b, inputs = simple_inputs()
        results = await asyncio.gather(*(c.infer("simple", inputs) for _ in range(8)))
        for r in results:
            np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a - b)
        assert len((await c.get_inference_statistics("simple")).model_stats) == 1
        assert (await c.get_model_config("mlp")).config.max_batch_size == 8
        with pytest.raises(InferenceServerException, match="Request for unknown model"):
            await c.infer("nope", inputs)


# ---- typed contents (grpc_explicit_*_content_client.py) -----------------------------------------


def _typed_request(**contents):
    request = tpb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        for field, values in contents.items():
            getattr(tensor.contents, field).extend(values)
    return request


def test_typed_int_contents(stub):
    response = stub.ModelInfer(_typed_request(int_contents=list(range(16))))
    out0 = np.frombuffer(response.raw_output_contents[0], dtype=np.int32)
    np.testing.assert_array_equal(out0, np.arange(16) * 2)
    assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]


def test_typed_bytes_contents(stub):
    request = tpb.ModelInferRequest(model_name="simple_identity")
    tensor = request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 2])
    tensor.contents.bytes_contents.extend([b"a\x00b", b"cd"])
    response = stub.ModelInfer(request)
    assert response.raw_output_contents[0] == b"\x03\x00\x00\x00a\x00b\x02\x00\x00\x00cd"


def test_typed_contents_errors(stub):
    e = raw_error(lambda: stub.ModelInfer(_typed_request(int64_contents=list(range(16)))))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "unexpected explicit tensor data for input tensor 'INPUT0' for model 'simple' of type 'INT64', expected datatype 'INT32'"
        in e.details()
    )
    request = _typed_request(int_contents=list(range(16)))
    request.raw_input_contents.append(bytes(64))
    e = raw_error(lambda: stub.ModelInfer(request))
    assert (
        "contents field must not be specified when using raw_input_contents for 'INPUT0' for model 'simple'"
        in e.details()
    )
    request = tpb.ModelInferRequest(model_name="simple")
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
    e = raw_error(lambda: stub.ModelInfer(request))
    assert (
        "unable to find data for input tensor 'INPUT0' for model 'simple' in request."
        in e.details()
    )
    request = tpb.RepositoryIndexRequest(repository_name="other")
    e = raw_error(lambda: stub.RepositoryIndex(request))
    assert e.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "'repository_name' specification is not supported" in e.details()


# ---- the bad-input table of test_bad_input.py, over gRPC -----------------------------------------


def _inputs(*specs):
    """(name, shape, datatype, numpy data or None for a matching zero array)."""
    out = []
    for name, shape, datatype, data in specs:
        inp = grpcclient.InferInput(name, list(shape), datatype)
        if data is None:
            data = np.zeros(shape, dtype=np.float32 if datatype == "FP32" else np.int32)
        inp.set_data_from_numpy(data)
        out.append(inp)
    return out


I0 = ("INPUT0", (1, 16), "INT32", None)
I1 = ("INPUT1", (1, 16), "INT32", None)

CASES = [
    # (id, model, inputs, outputs, kwargs, status, message fragment)
    (
        "unknown model",
        "nope",
        [I0, I1],
        None,
        {},
        "NOT_FOUND",
        "Request for unknown model: 'nope' is not found",
    ),
    (
        "unknown version",
        "simple",
        [I0, I1],
        None,
        {"model_version": "3"},
        "NOT_FOUND",
        "Request for unknown model: 'simple' version 3",
    ),
    (
        "missing input",
        "simple",
        [I0],
        None,
        {},
        "INVALID_ARGUMENT",
        "expected 2 inputs but got 1 inputs for model 'simple'",
    ),
    (
        "extra input",
        "simple",
        [I0, I1, ("EXTRA", (1, 16), "INT32", None)],
        None,
        {},
        "INVALID_ARGUMENT",
        "unexpected inference input 'EXTRA' for model 'simple'",
    ),
    (
        "wrong datatype",
        "simple",
        [("INPUT0", (1, 16), "FP32", None), I1],
        None,
        {},
        "INVALID_ARGUMENT",
        "inference input 'INPUT0' data-type is 'FP32', but model 'simple' expects 'INT32'",
    ),
    (
        "wrong shape",
        "simple",
        [("INPUT0", (1, 8), "INT32", None), ("INPUT1", (1, 8), "INT32", None)],
        None,
        {},
        "INVALID_ARGUMENT",
        "unexpected shape for input 'INPUT0' for model 'simple'",
    ),
    (
        "batch too large",
        "simple",
        [("INPUT0", (9, 16), "INT32", None), ("INPUT1", (9, 16), "INT32", None)],
        None,
        {},
        "INVALID_ARGUMENT",
        "batch-size must be <= 8 for 'simple'",
    ),
    (
        "unknown output",
        "simple",
        [I0, I1],
        ["NOPE"],
        {},
        "INVALID_ARGUMENT",
        "unexpected inference output 'NOPE' for model 'simple'",
    ),
    (
        "duplicate output",
        "simple",
        [I0, I1],
        ["OUTPUT0", "OUTPUT0"],
        {},
        "INVALID_ARGUMENT",
        "output 'OUTPUT0' already exists in request",
    ),
    (
        "duplicate input",
        "simple",
        [I0, I0, I1],
        None,
        {},
        "INVALID_ARGUMENT",
        "input 'INPUT0' already exists in request",
    ),
    (
        "bad version string",
        "simple",
        [I0, I1],
        None,
        {"model_version": "x1"},
        "INVALID_ARGUMENT",
        "failed to get model version from specified version string 'x1'",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_requests(gc, case):
    _, model, specs, outputs, kwargs, status, fragment = case
    requested = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
    e = error(lambda: gc.infer(model, _inputs(*specs), outputs=requested, **kwargs))
    assert e.status() == f"StatusCode.{status}", e.message()
    assert fragment in e.message()
    ok(gc)


def _raw_request(*raws, datatype="INT32", shape=(1, 16)):
    request = tpb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    request.raw_input_contents.extend(raws)
    return request


RAW_CASES = [
    (
        "short raw input",
        _raw_request(bytes(60), bytes(64)),
        "input byte size mismatch for input 'INPUT0'",
    ),
    (
        "long raw input",
        _raw_request(bytes(68), bytes(64)),
        "input byte size mismatch for input 'INPUT0'",
    ),
    (
        "too few raw entries",
        _raw_request(bytes(64)),
        "unable to find data for input tensor 'INPUT1'",
    ),
    (
        "negative dim",
        _raw_request(bytes(64), bytes(64), shape=(-1, 16)),
        "unexpected shape for input 'INPUT0'",
    ),
    (
        "unknown datatype",
        _raw_request(bytes(64), bytes(64), datatype="INT33"),
        "invalid datatype 'INT33' of input 'INPUT0'",
    ),
]


@pytest.mark.parametrize("case", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_bad_raw_requests(gc, stub, case):
    _, request, fragment = case
    e = raw_error(lambda: stub.ModelInfer(request))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
    assert fragment in e.details()
    ok(gc)


def test_bytes_length_prefix_past_buffer(gc, stub):
    request = tpb.ModelInferRequest(model_name="simple_identity")
    request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.append((1000).to_bytes(4, "little") + b"abc")
    e = raw_error(lambda: stub.ModelInfer(request))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "claims 1000 bytes" in e.details()
    ok(gc)


PARAM_CASES = [
    (
        "sequence_id",
        tpb.InferParameter(uint64_param=3),
        "invalid value type for 'sequence_id' parameter, expected int64_param or string_param.",
    ),
    (
        "sequence_start",
        tpb.InferParameter(int64_param=1),
        "invalid value type for 'sequence_start' parameter, expected bool_param.",
    ),
    (
        "priority",
        tpb.InferParameter(string_param="high"),
        "invalid value type for 'priority' parameter, expected int64_param or uint64_param.",
    ),
    (
        "timeout",
        tpb.InferParameter(bool_param=True),
        "invalid value type for 'timeout' parameter, expected int64_param.",
    ),
    (
        "triton_x",
        tpb.InferParameter(bool_param=True),
        "parameter keys starting with 'triton_' are reserved for Triton usage",
    ),
    (
        "custom",
        tpb.InferParameter(uint64_param=1),
        "invalid value type for 'custom' parameter, expected int64_param, bool_param, or string_param.",
    ),
]


@pytest.mark.parametrize("key,value,fragment", PARAM_CASES, ids=[c[0] for c in PARAM_CASES])
def test_bad_parameters(gc, stub, key, value, fragment):
    request = _raw_request(bytes(64), bytes(64))
    request.parameters[key].CopyFrom(value)
    e = raw_error(lambda: stub.ModelInfer(request))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in e.details()
    ok(gc)


def test_priority_timeout_and_custom_parameters_accepted(gc):
    a, b, inputs = simple_inputs()
    result = gc.infer(
        "simple", inputs, priority=1, timeout=10_000_000, parameters={"k": "v", "n": 2}
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


# ---- sequences over unary calls (simple_grpc_sequence_sync_infer_client.py) ----------------------


def test_unary_sequences(gc):
    values = [11, 7, 5, 3, 2, 0, 1]

    def run(model, sid, first):
        out = []
        seq = [first] + values
        for i, v in enumerate(seq):
            inp = grpcclient.InferInput("INPUT", [1, 1], "INT32")
            inp.set_data_from_numpy(np.full((1, 1), v, dtype=np.int32))
            r = gc.infer(
                model, [inp], sequence_id=sid, sequence_start=i == 0, sequence_end=i == len(seq) - 1
            )
            out.append(int(r.as_numpy("OUTPUT")[0, 0]))
        return out

    assert run("simple_sequence", 1000, 0) == [1] + values
    assert run("simple_sequence", str(uuid.uuid4()), 20) == [21] + values
    assert run("simple_dyna_sequence", 1001, 100) == [101] + values[:-1] + [1 + 1001]


# ---- model repository in NONE mode, trace and log settings ---------------------------------------


def test_repository_index_and_control_refused(gc):
    index = gc.get_model_repository_index()
    names = {m.name for m in index.models}
    assert {"simple", "mlp", "simple_identity"} <= names
    assert all(m.state == "READY" for m in index.models)
    assert len(gc.get_model_repository_index(as_json=True)["models"]) == len(index.models)
    e = error(lambda: gc.load_model("simple"))
    assert e.status() == "StatusCode.UNAVAILABLE"
    assert "explicit model load / unload is not allowed" in e.message()
    e = error(lambda: gc.unload_model("simple"))
    assert e.status() == "StatusCode.UNAVAILABLE"


def test_trace_settings(gc):
    settings = gc.get_trace_settings(as_json=True)["settings"]
    assert settings["trace_level"]["value"] == ["OFF"]
    assert settings["trace_rate"]["value"] == ["1000"]
    updated = gc.update_trace_settings(
        model_name="simple", settings={"trace_rate": "7", "trace_level": ["TIMESTAMPS"]}
    )
    assert list(updated.settings["trace_rate"].value) == ["7"]
    assert list(updated.settings["trace_level"].value) == ["TIMESTAMPS"]
    cleared = gc.update_trace_settings(
        model_name="simple", settings={"trace_rate": None, "trace_level": None}
    )
    assert list(cleared.settings["trace_rate"].value) == ["1000"]
    assert list(gc.get_trace_settings().settings["trace_rate"].value) == ["1000"]
    e = error(lambda: gc.update_trace_settings(settings={"trace_file": "/tmp/x"}))
    assert e.status() == "StatusCode.UNIMPLEMENTED"
    e = error(lambda: gc.get_trace_settings(model_name="nope"))
    assert (
        e.status() == "StatusCode.INVALID_ARGUMENT"
        and "Request for unknown model : nope" in e.message()
    )
    e = error(lambda: gc.update_trace_settings(settings={"trace_rate": ["1", "2"]}))
    assert "expect only 1 value for 'trace_rate'" in e.message()


def test_log_settings(gc):
    assert gc.get_log_settings().settings["log_info"].bool_param is True
    assert "log_format" in gc.get_log_settings(as_json=True)["settings"]
    changed = gc.update_log_settings({"log_verbose_level": 1, "log_warning": True})
    assert changed.settings["log_verbose_level"].uint32_param == 1
    gc.update_log_settings({"log_verbose_level": 0})
    e = error(lambda: gc.update_log_settings({"log_file": "/tmp/elsewhere.log"}))
    assert e.status() == "StatusCode.UNIMPLEMENTED"
    e = error(lambda: gc.update_log_settings({"log_format": "fancy"}))
    assert e.status() == "StatusCode.INVALID_ARGUMENT"


# ---- shared memory (simple_grpc_shm_client.py) ----------------------------------------------------


def test_system_shared_memory(gc, server):
    tag = uuid.uuid4().hex[:8]
    gc.unregister_system_shared_memory()
    gc.unregister_cuda_shared_memory()
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    inp = shm.create_shared_memory_region(f"in-{tag}", f"/naiad-g-in-{tag}", 128)
    out = shm.create_shared_memory_region(f"out-{tag}", f"/naiad-g-out-{tag}", 128)
    try:
        shm.set_shared_memory_region(inp, [a])
        shm.set_shared_memory_region(inp, [b], offset=64)
        gc.register_system_shared_memory(f"in-{tag}", f"/naiad-g-in-{tag}", 128)
        gc.register_system_shared_memory(f"out-{tag}", f"/naiad-g-out-{tag}", 128)
        status = gc.get_system_shared_memory_status()
        assert status.regions[f"in-{tag}"].byte_size == 128
        assert status.regions[f"in-{tag}"].key == f"/naiad-g-in-{tag}"
        e = error(lambda: gc.register_system_shared_memory(f"in-{tag}", f"/naiad-g-in-{tag}", 128))
        assert e.status() == "StatusCode.ALREADY_EXISTS"
        inputs = [grpcclient.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in (0, 1)]
        inputs[0].set_shared_memory(f"in-{tag}", 64)
        inputs[1].set_shared_memory(f"in-{tag}", 64, offset=64)
        outputs = [grpcclient.InferRequestedOutput(f"OUTPUT{i}") for i in (0, 1)]
        outputs[0].set_shared_memory(f"out-{tag}", 64)
        outputs[1].set_shared_memory(f"out-{tag}", 64, offset=64)
        result = gc.infer("simple", inputs, outputs=outputs)
        assert result.get_response().raw_output_contents == [b"", b""]
        sum_ = shm.get_contents_as_numpy(out, np.int32, [1, 16])
        diff = shm.get_contents_as_numpy(out, np.int32, [1, 16], offset=64)
        np.testing.assert_array_equal(sum_, a + b)
        np.testing.assert_array_equal(diff, a - b)
        inputs[1].set_shared_memory(f"in-{tag}", 64, offset=100)
        e = error(lambda: gc.infer("simple", inputs))
        assert e.status() == "StatusCode.INVALID_ARGUMENT"
        assert f"Invalid offset + byte size for shared memory region: 'in-{tag}'" in e.message()
        inputs[1].set_shared_memory("nowhere", 64)
        e = error(lambda: gc.infer("simple", inputs))
        assert e.status() == "StatusCode.NOT_FOUND"
        gc.unregister_system_shared_memory(f"in-{tag}")
        assert f"in-{tag}" not in gc.get_system_shared_memory_status().regions
        e = error(lambda: gc.get_system_shared_memory_status(f"in-{tag}"))
        assert e.status() == "StatusCode.NOT_FOUND"
    finally:
        gc.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(inp)
        shm.destroy_shared_memory_region(out)
    ok(gc)


def test_cuda_shared_memory_without_gpu(gc):
    assert len(gc.get_cuda_shared_memory_status().regions) == 0
    e = error(lambda: gc.register_cuda_shared_memory("gpu0", b"\x00" * 64, 0, 1024))
    assert e.status() == "StatusCode.INVALID_ARGUMENT"
    assert "failed to register CUDA shared memory region: 'gpu0', GPUs not supported" in e.message()
    e = error(lambda: gc.get_cuda_shared_memory_status("gpu0"))
    assert e.status() == "StatusCode.NOT_FOUND"
    gc.unregister_cuda_shared_memory()


def test_client_shm_disabled(example_repo, server_factory):
    srv = server_factory(example_repo, "--allow-client-shm=false")
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    e = error(lambda: c.register_system_shared_memory("r", "/naiad-none", 64))
    assert e.status() == "StatusCode.UNIMPLEMENTED"
    assert "Start the server with '--allow-client-shm=true' to enable." in e.message()
    assert len(c.get_system_shared_memory_status().regions) == 0
    c.close()


# ---- explicit model control (simple_grpc_model_control.py) ---------------------------------------


def test_explicit_model_control(example_repo, server_factory, tmp_path):
    srv = server_factory(example_repo, "--model-control-mode=explicit", "--load-model=simple")
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    assert c.is_model_ready("simple") and not c.is_model_ready("mlp")
    c.load_model("simple", config=json.dumps({"max_batch_size": "16"}))
    assert c.get_model_config("simple").config.max_batch_size == 16
    e = error(lambda: c.load_model("simple", config='{"max_batch_size": "not a number"}'))
    assert "failed to load" in e.message()
    ok(c)  # the failed reload left the model serving
    e = error(lambda: c.load_model("simple", files={"file:" + "A" * 256: b"x"}, config="{}"))
    assert e.status() == "StatusCode.INTERNAL"
    assert "failed to poll from model repository" in e.message()
    assert c.is_server_live()
    e = error(lambda: c.load_model("wrong_model_name"))
    assert e.status() == "StatusCode.INTERNAL" and "failed to load" in e.message()
    c.unload_model("simple")
    assert not c.is_model_ready("simple")
    index = {m.name: m for m in c.get_model_repository_index().models}
    assert index["simple"].state == "UNAVAILABLE" and index["simple"].reason == "unloaded"
    # a whole model sent as raw file: bytes
    onnx = (example_repo / "simple" / "1" / "model.onnx").read_bytes()
    config = {
        "name": "uploaded",
        "platform": "onnxruntime_onnx",
        "max_batch_size": 8,
        "input": [{"name": f"INPUT{i}", "data_type": "TYPE_INT32", "dims": [16]} for i in (0, 1)],
        "output": [{"name": f"OUTPUT{i}", "data_type": "TYPE_INT32", "dims": [16]} for i in (0, 1)],
    }
    c.load_model("uploaded", config=json.dumps(config), files={"file:1/model.onnx": onnx})
    a, b, inputs = simple_inputs()
    np.testing.assert_array_equal(c.infer("uploaded", inputs).as_numpy("OUTPUT1"), a - b)
    assert not (example_repo / "uploaded").exists()
    e = error(lambda: c.load_model("evil", config="{}", files={"file:../escape": b"x"}))
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and "relative path" in e.message()
    c.unload_model("uploaded", unload_dependents=True)
    assert not c.is_model_ready("uploaded")
    c.close()


def test_load_parameter_types(example_repo, server_factory):
    srv = server_factory(example_repo, "--model-control-mode=explicit")
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = tstub.GRPCInferenceServiceStub(channel)
        request = tpb.RepositoryModelLoadRequest(model_name="simple")
        request.parameters["config"].int64_param = 1
        e = raw_error(lambda: stub.RepositoryModelLoad(request))
        assert (
            "invalid value type for load parameter 'config', expected string_param." in e.details()
        )
        request = tpb.RepositoryModelLoadRequest(model_name="simple")
        request.parameters["file:1/model.onnx"].string_param = "abc"
        e = raw_error(lambda: stub.RepositoryModelLoad(request))
        assert "expected bytes_param." in e.details()
        request = tpb.RepositoryModelLoadRequest(model_name="simple")
        request.parameters["color"].string_param = "blue"
        e = raw_error(lambda: stub.RepositoryModelLoad(request))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unrecognized load parameter 'color'." in e.details()
        request = tpb.RepositoryModelUnloadRequest(model_name="simple")
        request.parameters["unload_dependents"].string_param = "yes"
        e = raw_error(lambda: stub.RepositoryModelUnload(request))
        assert "expected bool_param." in e.details()


def test_grpc_off_and_port_in_use(example_repo, server_factory, server):
    srv = server_factory(example_repo, "--allow-grpc=false")
    assert srv.grpc_port is None and "GRPCInferenceService" not in srv.log()
    busy = server_factory(
        example_repo,
        f"--grpc-port={server.grpc_port}",
        "--grpc-address=127.0.0.1",
        wait_ready=False,
    )
    assert busy.process.wait(60) != 0
    assert "already in use" in busy.log()


def test_many_bytes_elements_raw_typed_and_streamed(gc, stub):
    """Big BYTES tensors (decoded and encoded off the event loop) come back whole."""
    n = 50_000
    data = np.array([[str(i).encode() for i in range(n)]], dtype=np.object_)
    inp = grpcclient.InferInput("INPUT0", [1, n], "BYTES")
    inp.set_data_from_numpy(data)
    assert gc.infer("simple_identity", [inp]).as_numpy("OUTPUT0").tolist() == data.tolist()
    request = tpb.ModelInferRequest(model_name="simple_identity")
    tensor = request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, n])
    tensor.contents.bytes_contents.extend(data.reshape(-1).tolist())
    response = stub.ModelInfer(request)
    assert len(response.raw_output_contents[0]) == sum(4 + len(x) for x in data.reshape(-1))
    results: queue.Queue = queue.Queue()
    gc.start_stream(callback=lambda result, error: results.put((result, error)))
    gc.async_stream_infer("simple_identity", [inp])
    result, err = results.get(timeout=60)
    gc.stop_stream()
    assert err is None and result.as_numpy("OUTPUT0").tolist() == data.tolist()
    assert gc.is_server_live()
