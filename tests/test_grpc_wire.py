"""The lean gRPC front's zero-copy ModelInfer: ``raw_input_contents`` split off the wire bytes
(naiad.grpc.codec.split_infer_request), ``raw_output_contents`` written around the output
arrays (encode_infer_response_wire), and large DATA frames handed on as they arrive
(naiad.grpc.h2). Each gives what protobuf and a buffered frame reader give: checked against
protobuf itself, through a raw HTTP/2 client (fields interleaved on the wire, frames split
across writes, padding) and through tritonclient.grpc with a 602 KB image each way."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import make_models
from google.protobuf.message import DecodeError
from naiad.grpc import codec
from naiad.grpc import grpc_service_pb2 as pb
from naiad.inference import InferRequest, InferResponse, RequestedOutput
from test_grpc_front import DATA, END_HEADERS, END_STREAM, H2, HEADERS, frame
from tritonclient.grpc import service_pb2 as tpb

PADDED = 0x8
SETTINGS, WINDOW_UPDATE = 4, 8
MAX = 2**31 - 1
SHAPE = (3, 224, 224)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    return codec._varint_bytes(number << 3 | 2) + codec._varint_bytes(len(payload)) + payload


def _inputs(*tensors: tuple[str, str, list[int]]) -> bytes:
    out = b""
    for name, datatype, shape in tensors:
        t = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
        out += _field(5, t.SerializeToString())
    return out


def _wire_requests() -> list[bytes]:
    """ModelInferRequests as clients may lay them out: protobuf's order, raw contents before,
    between and after the other fields, empty raw entries, unknown fields, repeated scalars."""
    a, b = b"\x01" * 64, b"\x02" * 70000
    msg = pb.ModelInferRequest(model_name="simple", model_version="1", id="x")
    msg.parameters["priority"].int64_param = 2
    msg.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
    msg.outputs.add(name="OUTPUT0")
    msg.raw_input_contents.extend([a, b])
    plain = msg.SerializeToString()
    two = _inputs(("INPUT0", "INT32", [1, 16]), ("INPUT1", "INT32", [1, 16]))
    return [
        plain,
        _field(7, a) + _field(1, b"simple") + two + _field(7, b),  # raw first and last
        _field(1, b"simple") + _field(7, b"") + two + _field(7, a),  # an empty raw entry
        _field(1, b"first") + _field(7, a) + _field(1, b"simple") + two,  # the last name wins
        _field(1, b"simple") + b"\xf8\x01\x05" + _field(7, a) + b"\x8d\x02abcd",  # unknown
        pb.ModelInferRequest(model_name="no_raw").SerializeToString(),
        b"",
    ]


def test_split_request_is_protobufs_message():
    for data in _wire_requests():
        expected = pb.ModelInferRequest.FromString(data)
        split = codec.split_infer_request(memoryview(data))
        got = split.msg
        if split.raw is not None:
            if len(data) > codec._INLINE_WALK:  # large messages: views, not copies
                assert all(isinstance(r, memoryview) for r in split.raw)
            got.raw_input_contents.extend(bytes(r) for r in split.raw)
        assert got == expected


def _flipped(data: bytes, split: codec.SplitRequest) -> bytes:
    """``data`` with every byte of its raw contents changed (nothing else)."""
    out = bytearray(data)
    start = 0
    for r in split.raw or ():
        at = data.find(bytes(r), start)
        out[at : at + len(r)] = bytes(x ^ 0x5A for x in bytes(r))
        start = at + len(r)
    return bytes(out)


def test_split_request_seen_before_is_protobufs_message():
    """A small message laid out as one split before (the same bytes but its raw contents) is
    not walked again: it still gives protobuf's message; messages of the same size laid out
    otherwise (another name, raw entries of other lengths) are not mistaken for it."""
    for data in _wire_requests():
        first = codec.split_infer_request(memoryview(data))
        for again in (data, _flipped(data, first)):
            expected = pb.ModelInferRequest.FromString(again)
            split = codec.split_infer_request(memoryview(again))
            if split.raw is not None:
                split.msg.raw_input_contents.extend(bytes(r) for r in split.raw)
            assert split.msg == expected
    two = _inputs(("INPUT0", "INT32", [1, 16]), ("INPUT1", "INT32", [1, 16]))
    same_size = [
        _field(1, b"simple") + two + _field(7, b"a" * 64) + _field(7, b"b" * 64),
        _field(1, b"simplf") + two + _field(7, b"a" * 64) + _field(7, b"b" * 64),
        _field(1, b"simple") + two + _field(7, b"a" * 60) + _field(7, b"b" * 68),
        _field(1, b"simple") + two + _field(7, b"a") + _field(7, b"b" * 127),
        _field(1, b"simple") + _field(7, b"a" * 64) + two + _field(7, b"b" * 64),
    ]
    assert len({len(d) for d in same_size}) == 1
    for _ in range(2):
        for data in same_size:
            split = codec.split_infer_request(data)
            assert split.raw is not None
            split.msg.raw_input_contents.extend(bytes(r) for r in split.raw)
            assert split.msg == pb.ModelInferRequest.FromString(data)


def test_split_request_fails_as_protobuf_does():
    for data in (
        _field(1, b"simple")[:-2],  # a length past the end
        b"\x3a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint too long
        _field(7, b"abc") + b"\x0a",  # truncated after a raw entry
        _field(1, b"\xff\xfe") + _field(7, b"abc"),  # a string that is not UTF-8
    ):
        with pytest.raises(DecodeError):
            pb.ModelInferRequest.FromString(data)
        with pytest.raises(DecodeError):
            codec.split_infer_request(data)


def test_split_inputs_are_views_of_the_wire_bytes():
    image = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(1, *SHAPE)
    msg = pb.ModelInferRequest(model_name="identity_image")
    msg.inputs.add(name="input", datatype="FP32", shape=[1, *SHAPE])
    msg.raw_input_contents.append(image.tobytes())
    buf = bytearray(msg.SerializeToString())
    split = codec.split_infer_request(memoryview(buf))
    request, _ = codec.parse_infer_request(split.msg, None, split.raw)
    array = request.inputs["input"]
    assert np.array_equal(array, image)
    assert np.shares_memory(array, np.frombuffer(buf, dtype=np.uint8))


def test_wire_response_is_protobufs_bytes():
    big = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(1, *SHAPE)
    outputs = {
        "big": big,
        "small": np.arange(16, dtype=np.int32).reshape(1, 16),
        "text": np.array([[b"a", b"bc", b""]], dtype=np.object_),
        "strided": big[:, :, ::2, :],
    }
    datatypes = {"big": "FP32", "small": "INT32", "text": "BYTES", "strided": "FP32"}
    params = {"sequence_id": 7, "flag": True, "score": 0.5, "who": "me"}
    # twice each (the second answer's other fields are the kept bytes), then other shapes
    for parameters, small in [({}, 16), ({}, 16), (params, 16), ({}, 8), ({}, 8)]:
        outputs["small"] = np.arange(small, dtype=np.int32).reshape(1, small)
        request = InferRequest("m", -1, "id-1")
        request.outputs = [RequestedOutput(name, binary=True) for name in outputs]
        response = InferResponse("m", 3, "id-1", dict(outputs), dict(datatypes))
        response.parameters = dict(parameters)
        expected = codec.encode_infer_response(request, response).SerializeToString()
        wire = codec.encode_infer_response_wire(request, response)
        assert b"".join(wire.pieces) == expected
        assert any(isinstance(p, memoryview) and len(p) == big.nbytes for p in wire.pieces)


# ---- through the server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_server(tmp_path_factory, example_repo):
    from conftest import start_server

    repo = tmp_path_factory.mktemp("wire_repo")
    make_models.write_identity_image(repo)
    make_models.write_simple(repo)
    srv = start_server(repo, "--grpc-fast-path=true", log_dir=tmp_path_factory.mktemp("logs"))
    yield srv
    srv.stop()


def _simple_request() -> tuple[bytes, np.ndarray, np.ndarray]:
    """simple's request with its raw contents interleaved with the inputs on the wire."""
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    data = (
        _field(7, a.tobytes())
        + _field(1, b"simple")
        + _inputs(("INPUT0", "INT32", [1, 16]))
        + _field(7, b.tobytes())
        + _inputs(("INPUT1", "INT32", [1, 16]))
    )
    return data, a, b


def _check_simple(h: H2, sid: int, a: np.ndarray, b: np.ndarray) -> None:
    headers, data = h.answer(sid)
    assert headers.get("grpc-status") == "0", headers
    reply = tpb.ModelInferResponse.FromString(data[5:])
    out = dict(zip((o.name for o in reply.outputs), reply.raw_output_contents, strict=True))
    assert np.frombuffer(out["OUTPUT0"], dtype=np.int32).tolist() == (a + b)[0].tolist()
    assert np.frombuffer(out["OUTPUT1"], dtype=np.int32).tolist() == (a - b)[0].tolist()


def test_interleaved_raw_contents_over_http2(image_server):
    h = H2(image_server.grpc_port)
    data, a, b = _simple_request()
    body = b"\x00" + len(data).to_bytes(4, "big") + data
    h.send(frame(HEADERS, END_HEADERS, 1, h.block("ModelInfer")) + frame(DATA, END_STREAM, 1, body))
    _check_simple(h, 1, a, b)
    h.close()


def _image_body(image: np.ndarray) -> bytes:
    msg = tpb.ModelInferRequest(model_name="identity_image")
    msg.inputs.add(name="input", datatype="FP32", shape=[1, *SHAPE])
    msg.raw_input_contents.append(image.tobytes())
    data = msg.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


def _check_image(h: H2, sid: int, image: np.ndarray) -> None:
    headers, data = h.answer(sid)
    assert headers.get("grpc-status") == "0", headers
    reply = tpb.ModelInferResponse.FromString(data[5:])
    out = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(1, *SHAPE)
    assert np.array_equal(out, image)


def _wide_open(port: int) -> H2:
    """A raw client whose receive windows never hold the server's answers back."""
    h = H2(port)
    window = (4).to_bytes(2, "big") + (MAX).to_bytes(4, "big")
    h.send(
        frame(SETTINGS, 0, 0, window) + frame(WINDOW_UPDATE, 0, 0, (MAX - 65535).to_bytes(4, "big"))
    )
    return h


def test_large_data_frames_arriving_in_pieces(image_server):
    """One 602 KB DATA frame (and a padded one) sent in slices with pauses between, then
    frames of every size split anywhere: the server reads them as they come."""
    rng = np.random.default_rng(1)
    image = rng.random((1, *SHAPE), dtype=np.float32)
    body = _image_body(image)
    h = _wide_open(image_server.grpc_port)
    head = frame(HEADERS, END_HEADERS, 1, h.block("ModelInfer"))
    whole = head + frame(DATA, END_STREAM, 1, body)
    for i in range(0, len(whole), 100_003):
        h.send(whole[i : i + 100_003])
        time.sleep(0.01)
    _check_image(h, 1, image)
    padded = frame(DATA, END_STREAM | PADDED, 3, b"\x07" + body + b"\x00" * 7)
    whole = frame(HEADERS, END_HEADERS, 3, h.block("ModelInfer")) + padded
    h.send(whole[:50_000])
    time.sleep(0.05)
    h.send(whole[50_000:])
    _check_image(h, 3, image)
    # the message in frames of assorted sizes, the bytes cut at other places than the frames
    sizes = [1, 4, 20_000, 16_384, 16_385, 300_000]
    frames, pos, sid = b"", 0, 5
    while pos < len(body):
        n = sizes[len(frames) % len(sizes)]
        last = pos + n >= len(body)
        frames += frame(DATA, END_STREAM if last else 0, sid, body[pos : pos + n])
        pos += n
    whole = frame(HEADERS, END_HEADERS, sid, h.block("ModelInfer")) + frames
    for i in range(0, len(whole), 77_777):
        h.send(whole[i : i + 77_777])
    _check_image(h, sid, image)
    # and a small call after them on the same connection
    data, a, b = _simple_request()
    small = b"\x00" + len(data).to_bytes(4, "big") + data
    h.send(
        frame(HEADERS, END_HEADERS, 7, h.block("ModelInfer")) + frame(DATA, END_STREAM, 7, small)
    )
    _check_simple(h, 7, a, b)
    h.close()


def test_large_message_longer_or_shorter_than_it_says(image_server):
    """A large message is read into memory of the size its prefix says: DATA past that size,
    or the stream ending before it, fail the call as for any message (INTERNAL), and the
    connection serves on."""
    image = np.random.default_rng(3).random((1, *SHAPE), dtype=np.float32)
    body = _image_body(image)
    h = _wide_open(image_server.grpc_port)
    cases = {1: body + b"\x00" * 10, 3: body[:-10], 5: body + body}
    for sid, data in cases.items():
        h.send(frame(HEADERS, END_HEADERS, sid, h.block("ModelInfer")))
        for i in range(0, len(data), 200_000):  # large frames, the last one ending the stream
            last = END_STREAM if i + 200_000 >= len(data) else 0
            h.send(frame(DATA, last, sid, data[i : i + 200_000]))
        headers, _ = h.answer(sid)
        assert headers.get("grpc-status") == "13", headers
        assert headers.get("grpc-message") == "Expected one request message"
    h.send(frame(HEADERS, END_HEADERS, 7, h.block("ModelInfer")) + frame(DATA, END_STREAM, 7, body))
    _check_image(h, 7, image)
    h.close()


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_image_through_tritonclient(image_server, compression):
    gc = grpcclient.InferenceServerClient(image_server.grpc_url)
    image = np.random.default_rng(2).random((1, *SHAPE), dtype=np.float32)
    inp = grpcclient.InferInput("input", [1, *SHAPE], "FP32")
    inp.set_data_from_numpy(image)
    for _ in range(3):
        result = gc.infer("identity_image", [inp], compression_algorithm=compression)
        assert np.array_equal(result.as_numpy("output"), image)
    gc.close()


# ---- ModelInfer's plans (codec.RawPlan): a message seen before is not parsed again -------------


def _simple_message(a: np.ndarray, b: np.ndarray, extra: bytes | None = None) -> bytes:
    msg = tpb.ModelInferRequest(model_name="simple", id="same")
    for name in ("INPUT0", "INPUT1"):
        msg.inputs.add(name=name, datatype="INT32", shape=[1, 16])
    msg.raw_input_contents.extend([a.tobytes(), b.tobytes()])
    if extra is not None:
        msg.raw_input_contents.append(extra)
    data = msg.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


def _call(h: H2, sid: int, body: bytes) -> bytes:
    return frame(HEADERS, END_HEADERS, sid, h.block("ModelInfer")) + frame(
        DATA, END_STREAM, sid, body
    )


def test_a_planned_message_with_other_tensors(image_server):
    """The same fields each call with new tensors, a tensor of the wrong size, one raw entry
    too many: each answered as a first call would be, the plan used again after them."""
    h = H2(image_server.grpc_port)
    rng = np.random.default_rng(3)
    sid = 1
    for i in range(12):
        a = rng.integers(-1000, 1000, (1, 16), dtype=np.int32)
        b = rng.integers(-1000, 1000, (1, 16), dtype=np.int32)
        if i == 5:  # INPUT1 of 15 values: the size check still runs
            body = _simple_message(a, b[:, :15])
            h.send(_call(h, sid, body))
            headers, _ = h.answer(sid)
            assert headers["grpc-status"] == "3", headers  # INVALID_ARGUMENT
            assert "input byte size mismatch for input 'INPUT1'" in headers["grpc-message"]
        else:
            extra = b"\x00" * 8 if i == 8 else None  # an unused raw entry, as protobuf's path
            h.send(_call(h, sid, _simple_message(a, b, extra)))
            _check_simple(h, sid, a, b)
        sid += 2
    h.close()


def test_forwarded_headers_are_each_calls_own(tmp_path_factory, server_factory):
    """A planned message takes the headers of its own call, not those of the call it was
    planned from."""
    import json

    from test_header_forwarding import CONFIG, MODEL
    from tritonpy_models import write

    repo = tmp_path_factory.mktemp("fwd")
    write(repo, "params", MODEL, CONFIG)
    srv = server_factory(repo, "--grpc-header-forward-pattern=^my_")
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    inp = grpcclient.InferInput("INPUT0", [1], "FP32")
    inp.set_data_from_numpy(np.ones(1, np.float32))
    for headers in ({"my_a": "1"}, {"my_b": "2"}, {}, {"my_a": "3", "other": "x"}):
        params = json.loads(c.infer("params", [inp], headers=headers).as_numpy("PARAMS")[0])
        assert params == {k: v for k, v in headers.items() if k.startswith("my_")}
    c.close()
