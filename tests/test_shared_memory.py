"""System shared memory end to end: NVIDIA's shm examples, bounds, bad input, and unmapping."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from conftest import sleep_config
from httphelpers import raw, simple_inputs
from naiad.errors import InvalidArgument, NotFound
from naiad.shm import SharedMemoryManager
from tritonclient import utils
from tritonclient.utils import InferenceServerException


@pytest.fixture
def regions(client):
    """Create POSIX regions with keys unique to this test; everything is cleaned up after."""
    made = []
    tag = uuid.uuid4().hex[:8]

    def create(name: str, byte_size: int):
        key = f"/naiad-{tag}-{name}"
        handle = shm.create_shared_memory_region(name, key, byte_size)
        made.append(handle)
        return key, handle

    yield create
    client.unregister_system_shared_memory()
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def mapped(pid: int, key: str) -> bool:
    """Whether process ``pid`` holds ``/dev/shm/<key>`` open (or mapped)."""
    path = f"/dev/shm/{key.lstrip('/')}"
    if path in Path(f"/proc/{pid}/maps").read_text():
        return True
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).removesuffix(" (deleted)") == path:
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def ok(client):
    a, b, inputs = simple_inputs()
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a + b)


def shm_inputs(region: str, byte_size: int, second_offset: int, datatype="INT32"):
    inputs = [
        httpclient.InferInput("INPUT0", [1, 16], datatype),
        httpclient.InferInput("INPUT1", [1, 16], datatype),
    ]
    inputs[0].set_shared_memory(region, byte_size)
    inputs[1].set_shared_memory(region, byte_size, offset=second_offset)
    return inputs


# ---- NVIDIA's examples --------------------------------------------------------------------------


def test_simple_http_shm_client(client, regions):
    """simple_http_shm_client.py: inputs and outputs in shm at offsets 0 and 64."""
    client.unregister_system_shared_memory()
    client.unregister_cuda_shared_memory()
    input0 = np.arange(16, dtype=np.int32)
    input1 = np.ones(16, dtype=np.int32)
    size = input0.nbytes
    out_key, out_handle = regions("output_data", size * 2)
    client.register_system_shared_memory("output_data", out_key, size * 2)
    in_key, in_handle = regions("input_data", size * 2)
    shm.set_shared_memory_region(in_handle, [input0])
    shm.set_shared_memory_region(in_handle, [input1], offset=size)
    client.register_system_shared_memory("input_data", in_key, size * 2)

    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=True),
    ]
    outputs[0].set_shared_memory("output_data", size)
    outputs[1].set_shared_memory("output_data", size, offset=size)
    results = client.infer("simple", shm_inputs("input_data", size, size), outputs=outputs)

    out0, out1 = results.get_output("OUTPUT0"), results.get_output("OUTPUT1")
    assert "data" not in out0 and "parameters" not in out0
    dtype = utils.triton_to_np_dtype(out0["datatype"])
    sums = shm.get_contents_as_numpy(out_handle, dtype, out0["shape"])
    diffs = shm.get_contents_as_numpy(out_handle, dtype, out1["shape"], offset=size)
    np.testing.assert_array_equal(sums[0], input0 + input1)
    np.testing.assert_array_equal(diffs[0], input0 - input1)

    status = {r["name"]: r for r in client.get_system_shared_memory_status()}
    assert status["input_data"] == {
        "name": "input_data",
        "key": in_key,
        "offset": 0,
        "byte_size": size * 2,
    }
    assert status["output_data"]["key"] == out_key
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status() == []


def test_simple_http_shm_string_client(client, regions):
    """simple_http_shm_string_client.py: serialized BYTES tensors in shm."""
    in0 = np.arange(16, dtype=np.int32)
    in1 = np.ones(16, dtype=np.int32)
    to_bytes = np.vectorize(lambda x: str(x).encode(), otypes=[object])
    want_sum = utils.serialize_byte_tensor(to_bytes(in0 + in1))
    want_diff = utils.serialize_byte_tensor(to_bytes(in0 - in1))
    data0 = utils.serialize_byte_tensor(to_bytes(in0).reshape(1, 16))
    data1 = utils.serialize_byte_tensor(to_bytes(in1).reshape(1, 16))
    sizes = {
        "input0_data": utils.serialized_byte_size(data0),
        "input1_data": utils.serialized_byte_size(data1),
        "output0_data": utils.serialized_byte_size(want_sum),
        "output1_data": utils.serialized_byte_size(want_diff),
    }
    handles = {}
    for name, size in sizes.items():
        key, handles[name] = regions(name, size)
        if name == "input0_data":
            shm.set_shared_memory_region(handles[name], [data0])
        elif name == "input1_data":
            shm.set_shared_memory_region(handles[name], [data1])
        client.register_system_shared_memory(name, key, size)
    inputs = [
        httpclient.InferInput("INPUT0", [1, 16], "BYTES"),
        httpclient.InferInput("INPUT1", [1, 16], "BYTES"),
    ]
    inputs[0].set_shared_memory("input0_data", sizes["input0_data"])
    inputs[1].set_shared_memory("input1_data", sizes["input1_data"])
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=True),
    ]
    outputs[0].set_shared_memory("output0_data", sizes["output0_data"])
    outputs[1].set_shared_memory("output1_data", sizes["output1_data"])
    results = client.infer("simple_string", inputs, outputs=outputs)
    out0 = results.get_output("OUTPUT0")
    assert out0["datatype"] == "BYTES"
    sums = shm.get_contents_as_numpy(handles["output0_data"], np.object_, out0["shape"])
    diffs = shm.get_contents_as_numpy(handles["output1_data"], np.object_, out0["shape"])
    assert [int(x) for x in sums[0]] == list(in0 + in1)
    assert [int(x) for x in diffs[0]] == list(in0 - in1)
    assert len(client.get_system_shared_memory_status()) == 4
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status() == []


def test_mixed_shm_and_binary_inputs_reuse_objects(client, regions):
    """reuse_infer_objects_client.py: one InferInput switched between shm and plain data."""
    a, b, inputs = simple_inputs()
    key, handle = regions("mixed", 64)
    shm.set_shared_memory_region(handle, [a[0]])
    client.register_system_shared_memory("mixed", key, 64)
    inputs[0].set_shared_memory("mixed", 64)
    result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    inputs[0].set_data_from_numpy(a + 1)
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a + 1 + b)


# ---- status, unregister, CUDA -------------------------------------------------------------------


def test_status_by_name_and_unregister_one(client, regions, server):
    key, _ = regions("one", 64)
    client.register_system_shared_memory("one", key, 32, offset=32)
    assert client.get_system_shared_memory_status("one") == [
        {"name": "one", "key": key, "offset": 32, "byte_size": 32}
    ]
    status, _, body = raw(server, "GET", "/v2/systemsharedmemory/region/nope/status")
    assert status == 404
    assert json.loads(body)["error"] == "Unable to find system shared memory region: 'nope'"
    client.unregister_system_shared_memory("nope")  # unknown: a no-op, 200
    client.unregister_system_shared_memory("one")
    assert client.get_system_shared_memory_status() == []


def test_cuda_shared_memory_without_gpu(client, server):
    client.unregister_cuda_shared_memory()
    client.unregister_cuda_shared_memory("anything")
    assert client.get_cuda_shared_memory_status() == []
    with pytest.raises(InferenceServerException) as info:
        client.register_cuda_shared_memory("gpu_region", b"\0" * 64, 0, 64)
    assert info.value.status() == "400"
    assert info.value.message() == (
        "failed to register CUDA shared memory region: 'gpu_region', GPUs not supported"
    )
    status, _, body = raw(server, "GET", "/v2/cudasharedmemory/region/gpu_region/status")
    assert status == 404 and "Unable to find cuda shared memory region" in json.loads(body)["error"]


# ---- bad input ----------------------------------------------------------------------------------


def _register(server, name: str, body: dict):
    status, _, payload = raw(
        server,
        "POST",
        f"/v2/systemsharedmemory/region/{name}/register",
        json.dumps(body).encode(),
    )
    return status, (json.loads(payload)["error"] if payload else "")


def test_register_errors(client, regions, server):
    key, _ = regions("reg", 128)
    client.register_system_shared_memory("reg", key, 128)
    # the same name twice
    with pytest.raises(InferenceServerException, match="'reg' already in manager") as info:
        client.register_system_shared_memory("reg", key, 64)
    assert info.value.status() == "400"
    # the same key under another name is allowed, as in Triton
    client.register_system_shared_memory("reg_again", key, 64, offset=64)
    cases = [
        ("missing", {"key": "/naiad-no-such-key", "byte_size": 8}, 500, "Unable to open"),
        ("too_big", {"key": key, "byte_size": 129}, 400, "'too_big': invalid args"),
        ("past_end", {"key": key, "offset": 120, "byte_size": 16}, 400, "invalid args"),
        ("empty", {"key": key, "byte_size": 0}, 400, "invalid args"),
        ("no_key", {"byte_size": 8}, 400, "has no 'key' field"),
        ("no_size", {"key": key}, 400, "has no 'byte_size' field"),
        ("neg", {"key": key, "byte_size": -1}, 400, "Unable to parse 'byte_size'"),
        ("nested", {"key": "/dir/key", "byte_size": 8}, 400, "invalid shared memory key"),
        ("dotdot", {"key": "/..", "byte_size": 8}, 400, "invalid shared memory key"),
        ("up", {"key": "../../etc/passwd", "byte_size": 8}, 400, "invalid shared memory key"),
        ("a%2Fb", {"key": key, "byte_size": 8}, 400, "region name must be"),
        ("..", {"key": key, "byte_size": 8}, 400, "region name must be"),
    ]
    for name, body, want_status, fragment in cases:
        status, message = _register(server, name, body)
        assert (status, fragment in message) == (want_status, True), (name, status, message)
    names = {r["name"] for r in client.get_system_shared_memory_status()}
    assert names == {"reg", "reg_again"}
    ok(client)


def test_infer_errors(client, regions, server):
    key, handle = regions("bounds", 128)
    shm.set_shared_memory_region(handle, [np.arange(32, dtype=np.int32)])
    client.register_system_shared_memory("bounds", key, 128)

    def infer_error(inputs, outputs=None):
        with pytest.raises(InferenceServerException) as info:
            client.infer("simple", inputs, outputs=outputs)
        return info.value.status(), info.value.message()

    assert infer_error(shm_inputs("nowhere", 64, 64)) == (
        "404",
        "Unable to find shared memory region: 'nowhere'",
    )
    assert infer_error(shm_inputs("bounds", 64, 128)) == (
        "400",
        "Invalid offset for shared memory region: 'bounds'",
    )
    assert infer_error(shm_inputs("bounds", 64, 96)) == (
        "400",
        "Invalid offset + byte size for shared memory region: 'bounds'",
    )
    status, message = infer_error(shm_inputs("bounds", 32, 64))
    assert status == "400" and "input byte size mismatch for input 'INPUT0'" in message
    # an output region that cannot hold the result, and one past the region's end
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)
    out.set_shared_memory("bounds", 32)
    status, message = infer_error(shm_inputs("bounds", 64, 64), [out])
    assert status == "500"
    assert "for output 'OUTPUT0' (32 bytes) should be at least 64 bytes" in message
    out.set_shared_memory("bounds", 64, offset=100)
    status, message = infer_error(shm_inputs("bounds", 64, 64), [out])
    assert (status, message) == (
        "400",
        "Invalid offset + byte size for shared memory region: 'bounds'",
    )
    # a region name that is not a string
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": [1, 16],
                    "datatype": "INT32",
                    "parameters": {"shared_memory_region": 7, "shared_memory_byte_size": 64},
                }
                for n in ("INPUT0", "INPUT1")
            ]
        }
    ).encode()
    status, _, payload = raw(server, "POST", "/v2/models/simple/infer", body)
    assert (
        status == 500 and "Unable to parse 'shared_memory_region'" in json.loads(payload)["error"]
    )
    ok(client)


def test_client_shm_can_be_disallowed(server_factory, example_repo):
    srv = server_factory(example_repo, "--allow-client-shm=false")
    c = httpclient.InferenceServerClient(srv.url)
    for call in (
        lambda: c.register_system_shared_memory("r", "/naiad-x", 8),
        lambda: c.unregister_system_shared_memory(),
    ):
        with pytest.raises(InferenceServerException, match="--allow-client-shm=true") as info:
            call()
        assert info.value.status() == "501"
    assert c.get_system_shared_memory_status() == []
    ok(c)
    c.close()


# ---- nothing leaks: unmapped on unregister, after in-flight use, at shutdown --------------------


def test_unregister_unmaps(client, regions, server):
    pid = server.process.pid
    key, handle = regions("leak", 128)
    shm.set_shared_memory_region(handle, [np.arange(32, dtype=np.int32)])
    client.register_system_shared_memory("leak", key, 128)
    assert mapped(pid, key)
    for _ in range(3):
        result = client.infer("simple", shm_inputs("leak", 64, 64))
        np.testing.assert_array_equal(
            result.as_numpy("OUTPUT0")[0], np.arange(16) + np.arange(16, 32)
        )
    client.unregister_system_shared_memory("leak")
    assert not mapped(pid, key)


SLEEP_CONFIG = sleep_config(1)


@pytest.fixture
def sleepy_server(server_factory, tmp_path):
    repo = tmp_path / "repo"
    (repo / "sleepy" / "1").mkdir(parents=True)
    (repo / "sleepy" / "config.pbtxt").write_text(SLEEP_CONFIG)
    return server_factory(repo, "--plugin", "naiad_test_backends")


def test_region_in_use_is_unmapped_after_the_request(sleepy_server, tmp_path):
    srv = sleepy_server
    pid = srv.process.pid
    c = httpclient.InferenceServerClient(srv.url, network_timeout=30)
    key = f"/naiad-{uuid.uuid4().hex[:8]}-inflight"
    handle = shm.create_shared_memory_region("inflight", key, 8)
    try:
        shm.set_shared_memory_region(handle, [np.array([1500.0, 0.0], dtype=np.float32)])
        c.register_system_shared_memory("inflight", key, 8)
        inp = httpclient.InferInput("INPUT0", [1, 1], "FP32")
        inp.set_shared_memory("inflight", 4)
        out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)
        out.set_shared_memory("inflight", 4, offset=4)
        done = {}

        def run():
            slow = httpclient.InferenceServerClient(srv.url, network_timeout=30)
            done["result"] = slow.infer("sleepy", [inp], outputs=[out])
            slow.close()

        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(0.5)  # the request is running, its region pinned
        c.unregister_system_shared_memory()
        assert c.get_system_shared_memory_status() == []
        assert mapped(pid, key), "a region in use must stay mapped"
        worker.join()
        assert "result" in done
        # the output went to the (unregistered but still mapped) region
        assert shm.get_contents_as_numpy(handle, np.float32, [1], offset=4)[0] == 1500.0
        assert not mapped(pid, key)
    finally:
        shm.destroy_shared_memory_region(handle)
        c.close()


def test_shutdown_unmaps(server_factory, example_repo):
    srv = server_factory(example_repo)
    key = f"/naiad-{uuid.uuid4().hex[:8]}-shutdown"
    handle = shm.create_shared_memory_region("bye", key, 64)
    try:
        c = httpclient.InferenceServerClient(srv.url)
        c.register_system_shared_memory("bye", key, 64)
        c.register_system_shared_memory("bye2", key, 32)
        c.close()
        assert srv.stop() == 0
        assert "unmapped 2 shared memory regions" in srv.log()
    finally:
        shm.destroy_shared_memory_region(handle)


def test_manager_unmaps_in_process():
    """The manager on its own: mappings of this very process come and go as documented."""
    key = f"/naiad-{uuid.uuid4().hex[:8]}-unit"
    path = Path("/dev/shm") / key[1:]
    path.write_bytes(bytes(range(256)) * 32)
    try:
        manager = SharedMemoryManager()
        manager.register("a", key, 4096, 100)  # offset not page aligned inside the mapping
        manager.register("b", key, 10, 20)
        lease = manager.lease()
        assert bytes(lease.read("a", 0, 4)) == bytes([0, 1, 2, 3])
        assert bytes(lease.read("b", 2, 3)) == bytes([12, 13, 14])
        view = lease.read("b", 0, 1)
        with pytest.raises(TypeError):
            view[0] = 1  # inputs are read-only copies
        with pytest.raises(InvalidArgument, match="Invalid offset \\+ byte size"):
            lease.read("a", 90, 20)
        with pytest.raises(NotFound):
            lease.read("zzz", 0, 1)
        manager.unregister("b")  # pinned by the lease: stays mapped
        assert mapped(os.getpid(), key)
        manager.unregister("a")
        lease.release()
        assert not mapped(os.getpid(), key)
        manager.register("c", key, 0, 64)
        assert mapped(os.getpid(), key) and len(manager) == 1
        assert manager.close() == 1
        assert not mapped(os.getpid(), key)
    finally:
        path.unlink()


# ---- a client that changes its object under the server -----------------------------------------


def _infer_error(client, inputs, outputs=None) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        client.infer("simple", inputs, outputs=outputs)
    return info.value.status(), info.value.message()


def test_a_truncated_object_fails_only_its_request(server_factory, example_repo):
    """ftruncate under a registered region: that request fails (it was a SIGBUS), all else serves."""
    srv = server_factory(example_repo)
    c = httpclient.InferenceServerClient(srv.url)
    key = f"/naiad-{uuid.uuid4().hex[:8]}-shrink"
    handle = shm.create_shared_memory_region("shrink", key, 8192)
    path = Path("/dev/shm") / key[1:]
    try:
        shm.set_shared_memory_region(handle, [np.arange(2048, dtype=np.int32)])
        c.register_system_shared_memory("shrink", key, 8192)
        ok_inputs = shm_inputs("shrink", 64, 4096)
        assert c.infer("simple", ok_inputs).as_numpy("OUTPUT0").shape == (1, 16)
        os.truncate(path, 0)
        status, message = _infer_error(c, shm_inputs("shrink", 64, 4096))
        assert status == "400" and "shared memory region 'shrink' is no longer valid" in message
        assert "holds 0 bytes" in message
        # an output into the truncated object fails the same way, with inputs sent inline
        out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)
        out.set_shared_memory("shrink", 64, offset=4096)
        _, _, inline = simple_inputs()
        status, message = _infer_error(c, inline, [out])
        assert status == "400" and "no longer valid" in message
        assert srv.process.poll() is None
        ok(c)
        # grown back: the region works again
        os.truncate(path, 8192)
        shm.set_shared_memory_region(handle, [np.arange(2048, dtype=np.int32)])
        got = c.infer("simple", shm_inputs("shrink", 64, 4096)).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(got[0], np.arange(16) + np.arange(1024, 1040))
        c.unregister_system_shared_memory()
    finally:
        shm.destroy_shared_memory_region(handle)
        c.close()


def test_an_unlinked_or_replaced_object_is_harmless(client, regions, server):
    """The registered object is unlinked, or replaced by a smaller one of the same name: the
    region keeps the object it opened (as a mapping would), and nothing crashes."""
    key, handle = regions("gone", 128)
    shm.set_shared_memory_region(handle, [np.arange(32, dtype=np.int32)])
    client.register_system_shared_memory("gone", key, 128)
    path = Path("/dev/shm") / key[1:]
    path.unlink()
    got = client.infer("simple", shm_inputs("gone", 64, 64)).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(got[0], np.arange(16) + np.arange(16, 32))
    path.write_bytes(b"\0" * 8)  # a new, smaller object under the same name
    got = client.infer("simple", shm_inputs("gone", 64, 64)).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(got[0], np.arange(16) + np.arange(16, 32))
    client.unregister_system_shared_memory("gone")
    assert not mapped(server.process.pid, key)
    ok(client)


def test_unregister_racing_requests(server_factory, example_repo):
    """Regions registered and unregistered while other clients infer through them: every
    request is answered (a result, or Triton's not-found error), and the server serves on."""
    srv = server_factory(example_repo)
    key = f"/naiad-{uuid.uuid4().hex[:8]}-race"
    handle = shm.create_shared_memory_region("race", key, 128)
    shm.set_shared_memory_region(handle, [np.arange(32, dtype=np.int32)])
    stop = threading.Event()
    answers: list[str] = []

    def churn():
        c = httpclient.InferenceServerClient(srv.url)
        while not stop.is_set():
            c.register_system_shared_memory("race", key, 128)
            c.unregister_system_shared_memory("race")
        c.close()

    def infer():
        c = httpclient.InferenceServerClient(srv.url)
        for _ in range(150):
            try:
                c.infer("simple", shm_inputs("race", 64, 64))
                answers.append("200")
            except InferenceServerException as exc:
                assert exc.status() == "404", exc.message()
                answers.append("404")
        c.close()

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        workers = [threading.Thread(target=infer) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        stop.set()
        churner.join()
        shm.destroy_shared_memory_region(handle)
    assert len(answers) == 300
    assert srv.process.poll() is None
    c = httpclient.InferenceServerClient(srv.url)
    ok(c)
    assert c.get_system_shared_memory_status() == []
    c.close()
