"""The C allocator is tuned at start (naiad.memory.tune_allocator): a request's buffers of
hundreds of KiB are reused from the heap instead of being mapped and faulted in anew each time.
Checked as a bound on the server's page faults per request, read from /proc."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from naiad import memory
from onnx import TensorProto, helper
from procfs import minor_faults

SHAPE = (3, 224, 224)  # one image in FP32: 602 KB each way
CONFIG = """name: "image_identity"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
output [ { name: "output" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
"""


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).mallopt  # noqa: B018
    except (OSError, AttributeError):
        return False
    return True


pytestmark = pytest.mark.skipif(not _glibc(), reason="the tuning is glibc's mallopt")


@pytest.fixture(scope="module")
def image_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("image_repo")
    folder = repo / "image_identity"
    (folder / "1").mkdir(parents=True)
    dims = ["batch", *SHAPE]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "image_identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(folder / "1" / "model.onnx"))
    (folder / "config.pbtxt").write_text(CONFIG)
    return repo


def _faults_per_request(pid: int, infer, count: int = 40) -> float:
    for _ in range(5):  # warm up: first requests grow the heaps
        infer()
    before = minor_faults(pid)
    for _ in range(count):
        infer()
    return (minor_faults(pid) - before) / count


def test_large_tensors_reuse_memory(image_repo, server_factory):
    srv = server_factory(image_repo)
    pid = srv.process.pid
    image = np.random.default_rng(0).random((1, *SHAPE), dtype=np.float32)

    hc = httpclient.InferenceServerClient(srv.url)
    hin = httpclient.InferInput("input", [1, *SHAPE], "FP32")
    hin.set_data_from_numpy(image)

    def http_infer():
        out = hc.infer("image_identity", [hin]).as_numpy("output")
        assert np.array_equal(out, image)

    gcl = grpcclient.InferenceServerClient(srv.grpc_url)
    gin = grpcclient.InferInput("input", [1, *SHAPE], "FP32")
    gin.set_data_from_numpy(image)

    def grpc_infer():
        out = gcl.infer("image_identity", [gin]).as_numpy("output")
        assert np.array_equal(out, image)

    # a fresh mapping of each 602 KB buffer is ~150 faults; untuned, a request took ~800
    assert _faults_per_request(pid, http_infer) < 150
    assert _faults_per_request(pid, grpc_infer) < 150
    hc.close()
    gcl.close()


def test_tuning_gives_way_to_the_users_own_settings(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert memory.tune_allocator() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert memory.tune_allocator() is True
