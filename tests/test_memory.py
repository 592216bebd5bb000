"""The C allocator is tuned at start (naiad.memory.tune_allocator): a request's buffers of
hundreds of KiB are reused from the heap instead of being mapped and faulted in anew each time.
Checked as a bound on the server's page faults per request, read from /proc."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import make_models
from naiad import memory
from procfs import minor_faults

SHAPE = (3, 224, 224)  # one image in FP32: 602 KB each way


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
    make_models.write_identity_image(repo)
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
        out = hc.infer("identity_image", [hin]).as_numpy("output")
        assert np.array_equal(out, image)

    gcl = grpcclient.InferenceServerClient(srv.grpc_url)
    gin = grpcclient.InferInput("input", [1, *SHAPE], "FP32")
    gin.set_data_from_numpy(image)

    def grpc_infer():
        out = gcl.infer("identity_image", [gin]).as_numpy("output")
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
