"""naiad's lean gRPC front (``--grpc-fast-path``, naiad.grpc.front): HTTP/2 framing edge cases
through a raw socket, flow control with a 64 MiB tensor, resets and deadlines with the server
serving on, GOAWAY on SIGTERM, and the same answers as grpcio's server for the same calls."""

from __future__ import annotations

import signal
import socket
import struct
import time

import grpc
import hpack
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from conftest import start_server
from tritonclient.grpc import service_pb2 as tpb
from tritonclient.grpc import service_pb2_grpc as tstub
from tritonclient.utils import InferenceServerException

MAX = 2**31 - 1
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9
END_STREAM, END_HEADERS = 0x1, 0x4
SERVICE = "/inference.GRPCInferenceService/"


@pytest.fixture(scope="module")
def lean(example_repo, sleep_repo, tmp_path_factory):
    logs = tmp_path_factory.mktemp("lean_logs")
    srv = start_server(
        [example_repo, sleep_repo],
        "--grpc-fast-path=true",
        "--plugin",
        "naiad_test_backends",
        log_dir=logs,
    )
    yield srv
    srv.stop()


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, kind, flags, sid) + payload


def message(msg) -> bytes:
    data = msg.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


class H2:
    """A minimal HTTP/2 client: frames out, frames in, gRPC calls decoded."""

    def __init__(self, port: int, preface: bytes = PREFACE) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buf = b""
        if preface:
            self.sock.sendall(preface + frame(SETTINGS, 0, 0))

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def block(self, rpc: str, extra=()) -> bytes:
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", SERVICE + rpc),
            (":authority", "127.0.0.1"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra,
        ]
        return self.encoder.encode(headers)

    def call(self, sid: int, rpc: str, msg, extra=()) -> bytes:
        return frame(HEADERS, END_HEADERS, sid, self.block(rpc, extra)) + frame(
            DATA, END_STREAM, sid, message(msg)
        )

    def frame(self):
        """The next frame (kind, flags, sid, payload), None at EOF."""
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return None
            self.buf += chunk
        n = int.from_bytes(self.buf[:3], "big")
        kind, flags, sid = self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big")
        payload, self.buf = self.buf[9 : 9 + n], self.buf[9 + n :]
        return kind, flags, sid, payload

    def answer(self, sid: int):
        """(status, grpc-status, grpc-message, DATA bytes) of stream ``sid``."""
        headers: dict[str, str] = {}
        data = b""
        while True:
            f = self.frame()
            assert f is not None, "connection closed before the answer"
            kind, flags, fsid, payload = f
            if kind == SETTINGS and not flags & 1:
                self.send(frame(SETTINGS, 1, 0))
            if fsid != sid:
                continue
            if kind == HEADERS:
                headers.update(self.decoder.decode(payload))
                if flags & END_STREAM:
                    return headers, data
            elif kind == DATA:
                data += payload
            elif kind == RST_STREAM:
                return {"rst": str(int.from_bytes(payload, "big"))}, data

    def goaway(self):
        """The error code of the GOAWAY the server sends, then checks the connection closes."""
        while True:
            f = self.frame()
            assert f is not None, "closed without GOAWAY"
            if f[0] == GOAWAY:
                code = int.from_bytes(f[3][4:8], "big")
                break
        assert self.frame() is None  # and then it closes
        return code


def live(h: H2, sid: int) -> None:
    headers, data = h.answer(sid)
    assert headers.get("grpc-status") == "0", headers
    reply = tpb.ServerLiveResponse.FromString(data[5:])
    assert reply.live


def test_bad_preface_is_goaway_protocol_error(lean):
    h = H2(lean.grpc_port, preface=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert h.goaway() == 1  # PROTOCOL_ERROR
    h.close()
    assert grpcclient.InferenceServerClient(lean.grpc_url).is_server_live()


def test_oversized_frame_is_goaway_frame_size_error(lean):
    h = H2(lean.grpc_port)
    h.send(struct.pack(">BHBBI", 0x20, 0, DATA, 0, 1))  # a 2 MiB frame: over the 1 MiB limit
    assert h.goaway() == 6  # FRAME_SIZE_ERROR
    h.close()


def test_unknown_frames_continuation_and_repeated_header_blocks(lean):
    h = H2(lean.grpc_port)
    h.send(frame(0xFA, 0, 0, b"ignore me") + frame(0xFB, 0x7, 1, b"and me"))
    h.send(h.call(1, "ServerLive", tpb.ServerLiveRequest()))
    live(h, 1)
    for sid in (3, 5, 7):  # the same header block again (indexed fields only): decoded once
        h.send(h.call(sid, "ServerLive", tpb.ServerLiveRequest()))
        live(h, sid)
    # a block split over HEADERS + CONTINUATION, adding to the dynamic table
    block = h.block("ModelMetadata", [("x-custom", "v" * 100)])
    h.send(
        frame(HEADERS, 0, 9, block[:10])
        + frame(CONTINUATION, 0, 9, block[10:20])
        + frame(CONTINUATION, END_HEADERS, 9, block[20:])
        + frame(DATA, END_STREAM, 9, message(tpb.ModelMetadataRequest(name="simple")))
    )
    headers, data = h.answer(9)
    assert headers["grpc-status"] == "0"
    assert tpb.ModelMetadataResponse.FromString(data[5:]).name == "simple"
    h.send(h.call(11, "ServerLive", tpb.ServerLiveRequest()))
    live(h, 11)
    # a PING is answered
    h.send(frame(PING, 0, 0, b"12345678"))
    while (f := h.frame()) is not None and f[0] != PING:
        pass
    assert f is not None and f[1] == 1 and f[3] == b"12345678"
    h.close()


def test_errors_in_trailers(lean):
    h = H2(lean.grpc_port)
    h.send(h.call(1, "ModelMetadata", tpb.ModelMetadataRequest(name="nope 100%")))
    headers, data = h.answer(1)
    assert headers["grpc-status"] == "5" and data == b""
    assert headers["grpc-message"] == "Request for unknown model: 'nope 100%25' is not found"
    h.send(h.call(3, "NoSuchRpc", tpb.ServerLiveRequest()))
    assert h.answer(3)[0]["grpc-status"] == "12"  # UNIMPLEMENTED
    h.send(frame(HEADERS, END_HEADERS, 5, h.block("ServerLive")))
    h.send(frame(DATA, END_STREAM, 5, b"\x00\x00\x00\x00\x09garbage!!"))
    assert h.answer(5)[0]["grpc-status"] == "13"  # INTERNAL: a message that does not parse
    # a message over 2 GiB - 1, announced: RESOURCE_EXHAUSTED at once, unary or streamed
    for sid, rpc in ((7, "ServerLive"), (9, "ModelStreamInfer")):
        h.send(frame(HEADERS, END_HEADERS, sid, h.block(rpc)))
        h.send(frame(DATA, 0, sid, b"\x00\xff\xff\xff\xff" + b"x" * 100))
        assert h.answer(sid)[0]["grpc-status"] == "8"
    h.send(h.call(11, "ServerLive", tpb.ServerLiveRequest()))
    live(h, 11)
    h.close()


def _sleep_request(ms: float):
    request = tpb.ModelInferRequest(model_name="sleepy")
    tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 1])
    assert tensor
    request.raw_input_contents.append(np.array([[ms]], dtype=np.float32).tobytes())
    return request


def _fails(gc) -> int:
    stats = gc.get_inference_statistics("sleepy").model_stats[0]
    return stats.inference_stats.fail.count


def test_rst_stream_mid_request_and_mid_execution(lean):
    gc = grpcclient.InferenceServerClient(lean.grpc_url)
    before = _fails(gc)
    h = H2(lean.grpc_port)
    # a request whose body never completes, reset
    h.send(frame(HEADERS, END_HEADERS, 1, h.block("ModelInfer")))
    h.send(frame(DATA, 0, 1, b"\x00\x00\x00\x01\x00" + b"x" * 10))
    h.send(frame(RST_STREAM, 0, 1, (8).to_bytes(4, "big")))
    # a request reset while the model runs: its ticket is cancelled (counted as a failure)
    h.send(h.call(3, "ModelInfer", _sleep_request(800.0)))
    time.sleep(0.3)
    h.send(frame(RST_STREAM, 0, 3, (8).to_bytes(4, "big")))
    h.send(h.call(5, "ServerLive", tpb.ServerLiveRequest()))
    live(h, 5)
    h.send(h.call(7, "ModelInfer", _sleep_request(1.0)))
    headers, data = h.answer(7)
    assert headers["grpc-status"] == "0"
    reply = tpb.ModelInferResponse.FromString(data[5:])
    assert np.frombuffer(reply.raw_output_contents[0], np.float32)[0] == 1.0
    h.close()
    assert _fails(gc) == before + 1
    gc.close()


def test_deadline_exceeded(lean):
    h = H2(lean.grpc_port)
    h.send(h.call(1, "ModelInfer", _sleep_request(1500.0), [("grpc-timeout", "200m")]))
    headers, _ = h.answer(1)
    assert headers["grpc-status"] == "4" and headers["grpc-message"] == "Deadline Exceeded"
    h.send(h.call(3, "ServerLive", tpb.ServerLiveRequest()))
    live(h, 3)
    h.close()
    gc = grpcclient.InferenceServerClient(lean.grpc_url)
    inp = grpcclient.InferInput("INPUT0", [1, 1], "FP32")
    inp.set_data_from_numpy(np.array([[1500.0]], dtype=np.float32))
    with pytest.raises(InferenceServerException) as info:
        gc.infer("sleepy", [inp], client_timeout=0.2)
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert gc.is_server_ready()
    gc.close()


def test_flow_control_with_a_64_mib_tensor(lean):
    """64 MiB each way: more than every receive window, so both sides wait for WINDOW_UPDATEs."""
    gc = grpcclient.InferenceServerClient(lean.grpc_url)
    big = np.array([[b"\x01\x02" * (32 << 20)]], dtype=np.object_)
    inp = grpcclient.InferInput("INPUT0", [1, 1], "BYTES")
    inp.set_data_from_numpy(big)
    assert gc.infer("simple_identity", [inp]).as_numpy("OUTPUT0")[0, 0] == big[0, 0]
    gc.close()


async def test_aio_client_and_stream(lean):
    async with aioclient.InferenceServerClient(lean.grpc_url) as c:
        assert await c.is_server_live()
        inp = aioclient.InferInput("INPUT0", [1, 1], "FP32")
        inp.set_data_from_numpy(np.array([[2.0]], dtype=np.float32))
        result = await c.infer("sleepy", [inp])
        assert result.as_numpy("OUTPUT0")[0, 0] == 2.0

        async def requests():
            for i in range(5):
                yield {"model_name": "sleepy", "inputs": [inp], "request_id": str(i)}

        ids = [r.get_response().id async for r, e in c.stream_infer(requests()) if e is None]
        assert ids == ["0", "1", "2", "3", "4"]


def test_goaway_on_sigterm(example_repo, server_factory):
    srv = server_factory(example_repo, "--grpc-fast-path=true")
    h = H2(srv.grpc_port)
    h.send(h.call(1, "ServerLive", tpb.ServerLiveRequest()))
    live(h, 1)
    srv.process.send_signal(signal.SIGTERM)
    assert h.goaway() == 0  # NO_ERROR
    assert srv.process.wait(30) == 0
    h.close()


# ---- both servers, the same answers -------------------------------------------------------------


def _calls():
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    infer = tpb.ModelInferRequest(model_name="simple", id="r1")
    for name in ("INPUT0", "INPUT1"):
        infer.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        infer.raw_input_contents.append(a.tobytes())
    bad = tpb.ModelInferRequest()
    bad.CopyFrom(infer)
    del bad.inputs[0].shape[:]
    bad.inputs[0].shape.extend([1, 8])
    return [
        ("ServerLive", tpb.ServerLiveRequest()),
        ("ServerMetadata", tpb.ServerMetadataRequest()),
        ("ModelReady", tpb.ModelReadyRequest(name="nope")),
        ("ModelMetadata", tpb.ModelMetadataRequest(name="simple")),
        ("ModelMetadata", tpb.ModelMetadataRequest(name="simple", version="x")),
        ("ModelConfig", tpb.ModelConfigRequest(name="simple_string")),
        ("ModelInfer", infer),
        ("ModelInfer", bad),
        ("ModelInfer", tpb.ModelInferRequest(model_name="nope")),
        ("RepositoryIndex", tpb.RepositoryIndexRequest()),
        ("RepositoryModelLoad", tpb.RepositoryModelLoadRequest(model_name="simple")),
        ("SystemSharedMemoryStatus", tpb.SystemSharedMemoryStatusRequest(name="nope")),
        ("CudaSharedMemoryRegister", tpb.CudaSharedMemoryRegisterRequest(name="c")),
        ("TraceSetting", tpb.TraceSettingRequest()),
    ]


def _answers(url: str) -> list:
    channel = grpc.insecure_channel(
        url,
        options=[("grpc.max_send_message_length", MAX), ("grpc.max_receive_message_length", MAX)],
    )
    stub = tstub.GRPCInferenceServiceStub(channel)
    out = []
    for rpc, request in _calls():
        try:
            reply = getattr(stub, rpc)(request, timeout=30)
            out.append((rpc, reply.SerializeToString(deterministic=True)))
        except grpc.RpcError as exc:
            out.append((rpc, exc.code(), exc.details()))
    stream_requests = [c[1] for c in _calls() if c[0] == "ModelInfer"]
    replies = stub.ModelStreamInfer(iter(stream_requests), timeout=30)
    out.append(("stream", [r.SerializeToString(deterministic=True) for r in replies]))
    channel.close()
    return out


def test_both_servers_give_the_same_answers(example_repo, sleep_repo, server_factory, lean):
    grpcio = server_factory(
        [example_repo, sleep_repo], "--grpc-fast-path=false", "--plugin", "naiad_test_backends"
    )
    lean_answers = _answers(lean.grpc_url)
    assert lean_answers == _answers(grpcio.grpc_url)
    assert any(len(a) == 3 for a in lean_answers)  # errors are among the answers compared


def test_ping_strikes_and_max_connection_age(example_repo, server_factory):
    srv = server_factory(
        example_repo, "--grpc-http2-max-ping-strikes=1", "--grpc-max-connection-age=1500"
    )
    # pings with no call open: the second is a strike, the third one too many
    h = H2(srv.grpc_port)
    for _ in range(3):
        h.send(frame(PING, 0, 0, b"abcdefgh"))
    assert h.goaway() == 11  # ENHANCE_YOUR_CALM
    h.close()
    # a connection older than --grpc-max-connection-age is sent GOAWAY and closed
    h = H2(srv.grpc_port)
    h.send(h.call(1, "ServerLive", tpb.ServerLiveRequest()))
    live(h, 1)
    assert h.goaway() == 0
    h.close()
    assert grpcclient.InferenceServerClient(srv.grpc_url).is_server_live()
