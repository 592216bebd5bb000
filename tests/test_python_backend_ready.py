"""``TritonPythonModel.is_ready()``: called at each model-readiness check (HTTP ``/ready``, gRPC
ModelReady), off the event loop, in both instance modes. True ⇒ ready; False, an exception, a
value that is not a bool, or no answer within 5 s ⇒ not ready (HTTP 400 ``Model version not
ready``, gRPC ``ready: false``), with the reason in the server's log; inference keeps working
and models without ``is_ready`` are answered as before."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonpy_models as tm

THREAD = 'parameters { key: "instance_isolation" value: { string_value: "thread" } }\n'

#: add_sub whose ``is_ready`` is given by ``BODY`` (the method's body)
_READY_MODEL = """
import asyncio
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT0", a + b), pb_utils.Tensor("OUTPUT1", a - b)]
            ))
        return responses

    BODY
"""

CHECKS = {
    "ready_true": "def is_ready(self):\n        return True",
    "ready_async": "async def is_ready(self):\n        await asyncio.sleep(0)\n        return True",
    "ready_false": "def is_ready(self):\n        return False",
    "ready_raises": "def is_ready(self):\n        raise RuntimeError('database gone')",
    "ready_not_bool": "def is_ready(self):\n        return 1",
    "ready_slow": (
        "def is_ready(self):\n        open(__file__ + '.calls', 'a').write('x')\n"
        "        time.sleep(6)\n        return True"
    ),
}
READY = {"ready_true", "ready_async", "add_sub"}


def write_repo(repo, mode: str) -> None:
    extra = THREAD if mode == "thread" else ""
    for name, body in CHECKS.items():
        tm.write(repo, name, _READY_MODEL.replace("BODY", body), tm.add_sub_config(name, extra))
    tm.write(repo, "add_sub", tm.ADD_SUB, tm.add_sub_config("add_sub", extra))  # no is_ready


def infer(client, model: str) -> None:
    x = np.arange(4, dtype=np.float32)
    mod = httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient
    inputs = [mod.InferInput("INPUT0", [4], "FP32"), mod.InferInput("INPUT1", [4], "FP32")]
    for i in inputs:
        i.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer(model, inputs).as_numpy("OUTPUT0"), x * 2)


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_is_ready_decides_model_readiness(tmp_path, server_factory, mode):
    write_repo(tmp_path, mode)
    srv = server_factory(tmp_path)
    http = httpclient.InferenceServerClient(srv.url)
    grpc = grpcclient.InferenceServerClient(srv.grpc_url)
    for name in sorted(set(CHECKS) - {"ready_slow"} | {"add_sub"}):
        expected = name in READY
        for _ in range(3):  # the same answer every time
            assert http.is_model_ready(name) is expected, name
            assert grpc.is_model_ready(name) is expected, name
        answer = requests.get(f"http://{srv.url}/v2/models/{name}/versions/1/ready", timeout=10)
        if expected:
            assert answer.status_code == 200 and answer.content == b""
        else:
            assert answer.status_code == 400
            assert answer.json() == {"error": "Model version not ready"}
        infer(http, name)  # readiness never gets in the way of inference
        infer(grpc, name)
    # unknown models: as before
    assert http.is_model_ready("nope") is False
    assert grpc.is_model_ready("nope") is False
    assert requests.get(f"http://{srv.url}/v2/models/nope/ready", timeout=10).status_code == 404
    log = srv.log()
    failed = "is not ready: Model '{}_0_0' is not ready (user-defined check failed)."
    for name in ("ready_false", "ready_raises", "ready_not_bool"):
        assert f"Model '{name}' version 1 {failed.format(name)}" in log
    assert "RuntimeError: database gone" in log
    assert "is_ready() must return a boolean value" in log
    http.close()
    grpc.close()


def test_a_slow_is_ready_times_out_and_checks_share_it(tmp_path, server_factory):
    """Over 5 s: not ready. HTTP and gRPC checks at once share the one call in flight, and the
    server answers everything else meanwhile."""
    write_repo(tmp_path, "process")
    srv = server_factory(tmp_path)
    http = httpclient.InferenceServerClient(srv.url)
    grpc = grpcclient.InferenceServerClient(srv.grpc_url)
    answers: dict[str, bool] = {}

    def check_grpc() -> None:
        other = grpcclient.InferenceServerClient(srv.grpc_url)
        answers["grpc"] = other.is_model_ready("ready_slow")
        other.close()

    thread = threading.Thread(target=check_grpc)
    thread.start()
    other = httpclient.InferenceServerClient(srv.url)
    assert other.is_model_ready("add_sub") is True  # not held up by the slow check
    infer(other, "add_sub")
    other.close()
    answers["http"] = http.is_model_ready("ready_slow")
    thread.join()
    assert answers == {"http": False, "grpc": False}
    log = srv.log()
    assert "the readiness check of instance 'ready_slow_0_0' did not answer within 5000 ms" in log
    # the two checks shared one call: the model's is_ready ran once
    assert (tmp_path / "ready_slow" / "1" / "model.py.calls").read_text() == "x"
    infer(http, "ready_slow")
    infer(grpc, "ready_slow")
    http.close()
    grpc.close()


def test_a_process_that_dies_in_is_ready_is_not_ready_and_comes_back(tmp_path, server_factory):
    """The instance's process exits inside ``is_ready``: that check answers not ready, the
    process is restarted, and the model serves (an inference waits for the restart)."""
    body = "def is_ready(self):\n        import os\n        os._exit(4)"
    tm.write(tmp_path, "dies", _READY_MODEL.replace("BODY", body), tm.add_sub_config("dies"))
    srv = server_factory(tmp_path)
    http = httpclient.InferenceServerClient(srv.url)
    assert http.is_model_ready("dies") is False
    infer(http, "dies")
    assert "exited unexpectedly with exit code 4" in srv.log()
    assert "Stub process 'dies_0_0' is not healthy: it exited with exit code 4" in srv.log()
    assert srv.process.poll() is None
    http.close()
