"""Instances in processes of their own (``instance_isolation: process``, the default of Triton
python models): a crashing model takes down only itself, instances run in separate processes,
large tensors cross through shared memory, any backend can be isolated, model control from
model code, and Triton's python-backend parameters are honoured or refused with the reason."""

from __future__ import annotations

import json
import os
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonpy_models as tm
from conftest import make_models
from tritonclient.utils import InferenceServerException

PROCESS = 'parameters { key: "instance_isolation" value: { string_value: "process" } }\n'


def add_sub_request(client, model="add_sub"):
    x = np.arange(4, dtype=np.float32)
    inputs = [
        httpclient.InferInput("INPUT0", [4], "FP32"),
        httpclient.InferInput("INPUT1", [4], "FP32"),
    ]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(x)
    result = client.infer(model, inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x * 2)


def crash(client, mode: int):
    inp = httpclient.InferInput("MODE", [1], "INT32")
    inp.set_data_from_numpy(np.array([mode], np.int32))
    return client.infer("crasher", [inp])


def simple_request(client, model="simple"):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [
        httpclient.InferInput("INPUT0", [1, 16], "INT32"),
        httpclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    np.testing.assert_array_equal(client.infer(model, inputs).as_numpy("OUTPUT0"), a * 2)


def shm_segments(pid: int) -> list[str]:
    return [p.name for p in Path("/dev/shm").glob(f"naiad-{pid}-*")]


def test_a_crashing_model_takes_down_only_itself(tmp_path, server_factory):
    tm.write(tmp_path, "crasher", tm.CRASHER, tm.CRASHER_CONFIG)
    tm.write(tmp_path, "add_sub", tm.ADD_SUB, tm.add_sub_config("add_sub"))
    make_models.write_simple(tmp_path)  # ONNX, in the server process
    srv = server_factory(tmp_path)
    client = httpclient.InferenceServerClient(srv.url)
    first_pid = int(crash(client, 0).as_numpy("PID")[0])
    assert first_pid != srv.process.pid

    failures: list[BaseException] = []
    served = [0]
    stop = threading.Event()

    def keep_serving():
        other = httpclient.InferenceServerClient(srv.url)  # gevent clients stay on one thread
        while not stop.is_set():
            try:
                add_sub_request(other)
                simple_request(other)
                served[0] += 1
            except BaseException as exc:
                failures.append(exc)
        other.close()

    thread = threading.Thread(target=keep_serving)
    thread.start()
    try:
        for mode, cause in ((1, "signal SIGSEGV (11)"), (2, "exit code 3")):
            with pytest.raises(InferenceServerException) as info:
                crash(client, mode)
            assert info.value.status() == "500"
            assert info.value.message() == (
                "Failed to process the request(s) for model instance 'crasher_0_0', message: "
                f"Stub process 'crasher_0_0' is not healthy: it exited with {cause}"
            )
            pid = int(crash(client, 0).as_numpy("PID")[0])  # restarted
            assert pid != first_pid
    finally:
        stop.set()
        thread.join()
    assert not failures
    assert served[0] > 0
    assert srv.process.poll() is None
    log = srv.log()
    assert "exited unexpectedly with signal SIGSEGV (11)" in log
    assert "exited unexpectedly with exit code 3" in log

    # the third crash within a minute: the model is marked UNAVAILABLE with the reason
    with pytest.raises(InferenceServerException):
        crash(client, 1)
    index = {e["name"]: e for e in client.get_model_repository_index()}
    assert index["crasher"]["state"] == "UNAVAILABLE"
    assert "crashed 3 times" in index["crasher"]["reason"]
    add_sub_request(client)
    simple_request(client)
    client.close()


def test_instances_are_separate_processes_and_tensors_cross_through_shm(tmp_path, server_factory):
    tm.write(
        tmp_path,
        "crasher",
        tm.CRASHER,
        tm.CRASHER_CONFIG.replace(
            "instance_group [ { kind: KIND_CPU } ]",
            "instance_group [ { count: 2 kind: KIND_CPU } ]",
        ),
    )
    tm.write(tmp_path, "double", tm.IDENTITY, tm.IDENTITY_CONFIG)
    make_models.write_simple(tmp_path)
    config = tmp_path / "simple" / "config.pbtxt"
    config.write_text(config.read_text() + PROCESS)  # any backend can be isolated
    srv = server_factory(tmp_path)
    client = httpclient.InferenceServerClient(srv.url)
    pids = {int(crash(client, 0).as_numpy("PID")[0]) for _ in range(4)}
    assert len(pids) == 2 and srv.process.pid not in pids

    big = np.random.default_rng(0).random(1 << 20, dtype=np.float32)  # 4 MiB each way
    inp = httpclient.InferInput("IN", [big.size], "FP32")
    inp.set_data_from_numpy(big)
    for _ in range(20):
        np.testing.assert_array_equal(client.infer("double", [inp]).as_numpy("OUT"), big * 2)
    # segments are reused once released, not made per tensor
    assert 0 < len(shm_segments(srv.process.pid)) <= 6

    simple_request(client)
    stats = client.get_inference_statistics("simple")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 1
    client.close()
    srv.stop()
    assert shm_segments(srv.process.pid) == []


def test_model_control_from_model_code(tmp_path, server_factory):
    tm.write(tmp_path, "loader", tm.LOADER, tm.LOADER_CONFIG)
    tm.write(tmp_path, "add_sub", tm.ADD_SUB, tm.add_sub_config("add_sub"))
    srv = server_factory(tmp_path, "--model-control-mode=explicit", "--load-model=loader")
    client = httpclient.InferenceServerClient(srv.url)
    inp = httpclient.InferInput("NAME", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"add_sub"], dtype=np.object_))
    steps = client.infer("loader", [inp]).as_numpy("STEPS").tolist()
    assert steps == [False, True, False, True]
    client.close()


def test_model_sent_along_from_model_code_is_loaded_and_serves(tmp_path, server_factory):
    """``pb_utils.load_model(name, config=..., files={"file:1/model.py": bytes})``: the files
    are written as sent, and the model they make serves."""
    tm.write(tmp_path, "uploader", tm.UPLOADER, tm.UPLOADER_CONFIG)
    srv = server_factory(tmp_path, "--model-control-mode=explicit", "--load-model=uploader")
    client = httpclient.InferenceServerClient(srv.url)
    config = {
        "name": "uploaded",
        "backend": "python",
        "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [-1]}],
        "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [-1]}],
    }
    inputs = []
    for key, value in (
        ("NAME", b"uploaded"),
        ("CONFIG", json.dumps(config).encode()),
        ("SOURCE", textwrap.dedent(tm.IDENTITY).lstrip().encode()),
    ):
        inputs.append(httpclient.InferInput(key, [1], "BYTES"))
        inputs[-1].set_data_from_numpy(np.array([value], dtype=np.object_))
    assert client.infer("uploader", inputs).as_numpy("READY").tolist() == [True]
    x = np.arange(5, dtype=np.float32)
    inp = httpclient.InferInput("IN", [5], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer("uploaded", [inp]).as_numpy("OUT"), x * 2)
    client.close()


@pytest.mark.parametrize(
    "parameter,value,reason",
    [
        ("instance_isolation", "fork", "must be 'process' or 'thread', not 'fork'"),
        ("FORCE_CPU_ONLY_INPUT_TENSORS", "maybe", "Incorrect value for FORCE_CPU_ONLY_INPUT"),
        ("EXECUTION_ENV_PATH", "$$TRITON_MODEL_DIRECTORY/env.tar.gz", "does not unpack conda-pack"),
        ("EXECUTION_ENV_PATH", "/nonexistent/env", "should contain an 'activate' script"),
    ],
)
def test_parameters_refused_with_the_reason(tmp_path, server_factory, parameter, value, reason):
    extra = f'parameters {{ key: "{parameter}" value: {{ string_value: "{value}" }} }}\n'
    folder = tm.write(tmp_path, "add_sub", tm.ADD_SUB, tm.add_sub_config("add_sub"), extra)
    if value.endswith(".tar.gz"):
        (folder / "env.tar.gz").write_bytes(b"\x1f\x8b")
    tm.write(tmp_path, "double", tm.IDENTITY, tm.IDENTITY_CONFIG)
    srv = server_factory(tmp_path, "--exit-on-error=false")
    client = httpclient.InferenceServerClient(srv.url)
    index = {e["name"]: e for e in client.get_model_repository_index()}
    assert index["add_sub"]["state"] == "UNAVAILABLE"
    assert reason in index["add_sub"]["reason"]
    assert index["double"]["state"] == "READY"
    client.close()


def test_execution_env_path_folder_joins_the_import_path(tmp_path, server_factory):
    import sys

    env = tmp_path / "env"
    site = (
        env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    )
    site.mkdir(parents=True)
    (env / "bin").mkdir()
    (env / "bin" / "activate").write_text("# an environment\n")
    (site / "only_in_env.py").write_text("FACTOR = 3\n")
    source = tm.IDENTITY.replace(
        "import triton_python_backend_utils as pb_utils",
        "import only_in_env\nimport triton_python_backend_utils as pb_utils",
    )
    source = source.replace("as_numpy() * 2", "as_numpy() * only_in_env.FACTOR")
    extra = f'parameters {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{env}" }} }}\n'
    tm.write(tmp_path / "repo", "double", source, tm.IDENTITY_CONFIG, extra)
    srv = server_factory(tmp_path / "repo")
    client = httpclient.InferenceServerClient(srv.url)
    inp = httpclient.InferInput("IN", [2], "FP32")
    inp.set_data_from_numpy(np.array([1, 2], np.float32))
    assert client.infer("double", [inp]).as_numpy("OUT").tolist() == [3, 6]
    assert "only_in_env" not in os.environ.get("PYTHONPATH", "")
    client.close()


ECHO_BYTES = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())]) for r in requests]
"""


@pytest.mark.parametrize("batching", [False, True])
def test_executions_from_the_loop_keep_every_answer_with_its_request(
    tmp_path, server_factory, batching
):
    """The event loop writes executions to the instance processes and reads their answers
    itself: many clients at once, messages larger than a socket buffer in both directions (a
    BYTES tensor travels inside the message), inputs over the loop's copy limit (the instance
    thread's way), each client gets its own answer back."""
    config = """
    name: "echo"
    backend: "python"
    max_batch_size: 8
    input [ { name: "IN" data_type: TYPE_STRING dims: [ -1 ] } ]
    output [ { name: "OUT" data_type: TYPE_STRING dims: [ -1 ] } ]
    instance_group [ { count: 2 kind: KIND_CPU } ]
    """
    tm.write(tmp_path, "echo", ECHO_BYTES, config, "dynamic_batching { }\n" if batching else "")
    tm.write(tmp_path, "double", tm.IDENTITY, tm.IDENTITY_CONFIG)
    srv = server_factory(tmp_path)
    failures: list[BaseException] = []

    def client_loop(index: int) -> None:
        client = httpclient.InferenceServerClient(srv.url, network_timeout=120)
        try:
            for round_ in range(6):
                size = (900_000 if round_ % 3 == 0 else 40) + index
                items = np.array([[bytes([65 + index]) * size, b"%d-%d" % (index, round_)]])
                inp = httpclient.InferInput("IN", list(items.shape), "BYTES")
                inp.set_data_from_numpy(items.astype(np.object_))
                out = client.infer("echo", [inp]).as_numpy("OUT")
                assert out.tolist() == items.tolist()
                big = np.full(300_000 + index, index, np.float32)  # 1.2 MB: over the limit
                fp = httpclient.InferInput("IN", [big.size], "FP32")
                fp.set_data_from_numpy(big)
                np.testing.assert_array_equal(client.infer("double", [fp]).as_numpy("OUT"), big * 2)
        except BaseException as exc:
            failures.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[0]
    stats = httpclient.InferenceServerClient(srv.url).get_inference_statistics("echo")
    assert stats["model_stats"][0]["inference_stats"]["success"]["count"] == 36


ECHO_OR_DIE = """
import os
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            if x[0] < 0:
                os._exit(5)  # dies with its shared-memory segments mapped
            note = np.array([b"ok"], dtype=np.object_)
            if x[0] == 7:  # an answer the wire cannot carry
                note = np.array([threading.Lock()], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", x * 2), pb_utils.Tensor("NOTE", note)]))
        return responses
"""

ECHO_OR_DIE_CONFIG = """
name: "echo_or_die"
backend: "python"
input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "NOTE" data_type: TYPE_STRING dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""


def test_shared_memory_after_a_crash_a_restart_and_an_unload(tmp_path, server_factory):
    """Tensors through reused segments on the loop's socket (256 KiB) and the instance thread's
    (4 MiB); a child that dies leaves none of its generation's segments behind, the restarted
    one makes and reuses its own, an unload removes every one; an answer that cannot cross
    fails alone and the instance keeps serving."""
    tm.write(tmp_path, "echo_or_die", ECHO_OR_DIE, ECHO_OR_DIE_CONFIG)
    srv = server_factory(tmp_path, "--model-control-mode=explicit", "--load-model=echo_or_die")
    client = httpclient.InferenceServerClient(srv.url, network_timeout=120)
    pid = srv.process.pid

    def echo(values):
        inp = httpclient.InferInput("IN", [values.size], "FP32")
        inp.set_data_from_numpy(values)
        result = client.infer("echo_or_die", [inp])
        np.testing.assert_array_equal(result.as_numpy("OUT"), values * 2)

    def rounds():
        for size in (1 << 16, 1 << 20) * 5:  # 256 KiB on the loop's path, 4 MiB on the thread's
            echo(np.random.default_rng(size).random(size, dtype=np.float32))

    rounds()
    first = set(shm_segments(pid))
    assert 0 < len(first) <= 12  # reused once released, not made per tensor

    with pytest.raises(InferenceServerException) as info:
        echo(np.full(1 << 16, -1, np.float32))
    assert "it exited with exit code 5" in info.value.message()
    assert not first & set(shm_segments(pid))  # the dead generation's are gone

    rounds()  # the restarted child
    second = set(shm_segments(pid))
    assert 0 < len(second) <= 12 and not first & second

    with pytest.raises(InferenceServerException) as info:
        echo(np.full(4, 7, np.float32))
    assert info.value.status() == "500"
    assert "could not be sent to the server" in info.value.message()
    rounds()  # the same child goes on

    client.unload_model("echo_or_die")
    client.close()
    assert shm_segments(pid) == []
    assert srv.process.poll() is None
