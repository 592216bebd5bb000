"""Models in Triton's python-backend style (``class TritonPythonModel``), written by the tests.

Each entry is (config.pbtxt or None, model.py source); :func:`write` puts one into a repository.
The sources are what a Triton user writes (NVIDIA's examples' shapes), unchanged.
"""

from __future__ import annotations

import textwrap
from pathlib import Path


def write(repo: Path, name: str, source: str, config: str | None, extra: str = "") -> Path:
    """``<repo>/<name>/config.pbtxt`` (unless None) and ``<repo>/<name>/1/model.py``."""
    folder = Path(repo) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    if config is not None:
        text = textwrap.dedent(config).strip() + "\n" + textwrap.dedent(extra)
        (folder / "config.pbtxt").write_text(text)
    (folder / "1" / "model.py").write_text(textwrap.dedent(source).lstrip())
    return folder


def add_sub_config(name: str, extra: str = "") -> str:
    return f'''
    name: "{name}"
    backend: "python"
    input [
      {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }},
      {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }}
    ]
    output [
      {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }},
      {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }}
    ]
    instance_group [ {{ kind: KIND_CPU }} ]
    {extra}
    '''


#: NVIDIA's python_backend examples/add_sub/model.py (comments dropped)
ADD_SUB = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        output0_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")
        output1_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT1")
        self.output0_dtype = pb_utils.triton_string_to_numpy(output0_config["data_type"])
        self.output1_dtype = pb_utils.triton_string_to_numpy(output1_config["data_type"])

    def execute(self, requests):
        output0_dtype = self.output0_dtype
        output1_dtype = self.output1_dtype
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            out_0, out_1 = (
                in_0.as_numpy() + in_1.as_numpy(),
                in_0.as_numpy() - in_1.as_numpy(),
            )
            out_tensor_0 = pb_utils.Tensor("OUTPUT0", out_0.astype(output0_dtype))
            out_tensor_1 = pb_utils.Tensor("OUTPUT1", out_1.astype(output1_dtype))
            inference_response = pb_utils.InferenceResponse(
                output_tensors=[out_tensor_0, out_tensor_1]
            )
            responses.append(inference_response)
        return responses

    def finalize(self):
        print("Cleaning up...")
"""

#: ``async def execute`` returning responses (non-decoupled)
ASYNC_ADD_SUB = """
import asyncio

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        await asyncio.sleep(0)
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", a + b), pb_utils.Tensor("OUTPUT1", a - b)]))
        return responses
"""

#: QA ``init_args``: the args dict comes back as JSON
INIT_ARGS = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.args = args

    def execute(self, requests):
        text = json.dumps(self.args, sort_keys=True)
        out = np.array([text.encode()], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("ARGS", out)]) for _ in requests]
"""

INIT_ARGS_CONFIG = """
name: "init_args"
backend: "python"
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "ARGS" data_type: TYPE_STRING dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU } ]
parameters { key: "custom_key" value: { string_value: "custom_value" } }
"""

#: NVIDIA's examples/auto_complete batch_auto_complete, no config.pbtxt
AUTO_COMPLETE = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        inputs = [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]},
                  {"name": "INPUT1", "data_type": "TYPE_FP32", "dims": [4]}]
        outputs = [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]},
                   {"name": "OUTPUT1", "data_type": "TYPE_FP32", "dims": [4]}]
        config = auto_complete_model_config.as_dict()
        input_names = [i["name"] for i in config["input"]]
        output_names = [o["name"] for o in config["output"]]
        for input in inputs:
            if input["name"] not in input_names:
                auto_complete_model_config.add_input(input)
        for output in outputs:
            if output["name"] not in output_names:
                auto_complete_model_config.add_output(output)
        auto_complete_model_config.set_max_batch_size(4)
        auto_complete_model_config.set_dynamic_batching()
        return auto_complete_model_config

    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", a + b), pb_utils.Tensor("OUTPUT1", a - b)]))
        return responses
"""

#: QA ``error_code``: input CODE picks the TritonError code; CODE < 0 raises instead
ERROR_CODE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            code = int(pb_utils.get_input_tensor_by_name(request, "CODE").as_numpy().flat[0])
            if code < 0:
                raise pb_utils.TritonModelException("the model raised on purpose")
            if code == 99:
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUT", np.array([[code]], dtype=np.int32))]))
                continue
            error = pb_utils.TritonError(f"error code {code}", code)
            responses.append(pb_utils.InferenceResponse(error=error))
        return responses
"""

ERROR_CODE_CONFIG = """
name: "error_code"
backend: "python"
max_batch_size: 8
input [ { name: "CODE" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 300000 }
instance_group [ { kind: KIND_CPU } ]
"""

#: a non-decoupled model answering by its return value (MODE 0), through the request's
#: response sender (1), not at all (2), or by return value after four threads asked for the
#: sender at once (3); OUT = 10 * MODE + the number of requested outputs the request reports
#: after the model changed the list it got + the number of distinct senders beyond one
SENDER_ANSWERS = """
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


def senders_seen(request):
    seen = []
    start = threading.Barrier(4)

    def ask():
        start.wait()
        seen.append(request.get_response_sender())

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len({id(s) for s in seen})


class TritonPythonModel:
    def execute(self, requests):
        answers = []
        for request in requests:
            mode = int(pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0, 0])
            request.requested_output_names().append("NOT_AN_OUTPUT")  # a copy
            value = 10 * mode + len(request.requested_output_names())
            if mode == 3:
                value += senders_seen(request) - 1
            response = pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", np.array([[value]], np.int32))])
            if mode == 1:
                assert not request.is_cancelled()
                sender = request.get_response_sender()
                sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                answers.append(None)
            elif mode == 2:
                answers.append(None)
            else:
                answers.append(response)
        return answers
"""

SENDER_ANSWERS_CONFIG = """
name: "sender_answers"
backend: "python"
max_batch_size: 8
input [ { name: "MODE" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 300000 }
instance_group [ { kind: KIND_CPU } ]
"""

#: reports how many requests each execute saw (the dynamic batcher's groups)
BATCH_COUNT = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        n = len(requests)
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "COUNT", np.full((r.inputs()[0].shape()[0], 1), n, dtype=np.int32))])
            for r in requests]
"""

BATCH_COUNT_CONFIG = """
name: "batch_count"
backend: "python"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 500000 preferred_batch_size: [ 4 ] }
instance_group [ { kind: KIND_CPU } ]
"""

#: NVIDIA's examples/decoupled square_int32: IN copies of OUT = IN*IN, from a thread
SQUARE = """
import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        using_decoupled = pb_utils.using_decoupled_model_transaction_policy(model_config)
        if not using_decoupled:
            raise pb_utils.TritonModelException(
                "the model `{}` can generate any number of responses per request, "
                "enable decoupled transaction policy in model configuration to "
                "serve this model".format(args["model_name"]))
        out_config = pb_utils.get_output_config_by_name(model_config, "OUT")
        self.out_dtype = pb_utils.triton_string_to_numpy(out_config["data_type"])
        self.inflight_thread_count = 0
        self.inflight_thread_count_lck = threading.Lock()

    def execute(self, requests):
        for request in requests:
            self.process_request(request)
        return None

    def process_request(self, request):
        in_input = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
        thread = threading.Thread(target=self.response_thread,
                                  args=(request.get_response_sender(), in_input))
        thread.daemon = True
        with self.inflight_thread_count_lck:
            self.inflight_thread_count += 1
        thread.start()

    def response_thread(self, response_sender, in_input):
        for idx in range(in_input[0]):
            out_output = pb_utils.Tensor("OUT", np.array([in_input[0]], np.int32))
            response = pb_utils.InferenceResponse(output_tensors=[out_output])
            response_sender.send(response)
        response_sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        with self.inflight_thread_count_lck:
            self.inflight_thread_count -= 1

    def finalize(self):
        cycles = 0
        while self.inflight_thread_count > 0 and cycles < 100:
            time.sleep(0.05)
            cycles += 1
"""

SQUARE_CONFIG = """
name: "square_int32"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: True }
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

#: ``async def execute`` in decoupled mode: IN holds values, each sent back with its index;
#: DELAY ms between responses; stops early (and counts it) when cancelled
REPEAT = """
import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        family = pb_utils.MetricFamily(
            name="repeat_cancelled", description="requests seen cancelled",
            kind=pb_utils.MetricFamily.COUNTER)
        self.cancelled = family.Metric(labels={"model": args["model_name"]})

    async def execute(self, requests):
        for request in requests:
            asyncio.ensure_future(self.answer(request))
        return None

    async def answer(self, request):
        sender = request.get_response_sender()
        values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
        delay = int(pb_utils.get_input_tensor_by_name(request, "DELAY").as_numpy()[0])
        for idx, value in enumerate(values):
            if request.is_cancelled():
                self.cancelled.increment(1)
                break
            sender.send(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", np.array([value], np.int32)),
                pb_utils.Tensor("IDX", np.array([idx], np.uint32))]))
            await asyncio.sleep(delay / 1000)
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""

REPEAT_CONFIG = """
name: "repeat_int32"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: True }
input [
  { name: "IN" data_type: TYPE_INT32 dims: [ -1 ] },
  { name: "DELAY" data_type: TYPE_UINT32 dims: [ 1 ] }
]
output [
  { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

#: NVIDIA's examples/custom_metrics shape: a counter of requests, a gauge and a histogram
CUSTOM_METRICS = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.counter_family = pb_utils.MetricFamily(
            name="requests_process_total", description="Requests processed by the model",
            kind=pb_utils.MetricFamily.COUNTER)
        self.gauge_family = pb_utils.MetricFamily(
            name="last_input_sum", description="Sum of the last input",
            kind=pb_utils.MetricFamily.GAUGE)
        self.histogram_family = pb_utils.MetricFamily(
            name="input_sum_hist", description="Input sums",
            kind=pb_utils.MetricFamily.HISTOGRAM)
        labels = {"model": args["model_name"], "version": args["model_version"]}
        self.counter = self.counter_family.Metric(labels=labels)
        self.gauge = self.gauge_family.Metric(labels=labels)
        self.histogram = self.histogram_family.Metric(labels=labels, buckets=[1.0, 10.0, 100.0])
        pb_utils.Logger.log_info("custom_metrics initialized")

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            self.counter.increment(1)
            self.gauge.set(float(x.sum()))
            self.histogram.observe(float(x.sum()))
            try:
                self.counter.increment(-1)
            except pb_utils.TritonModelException as exc:
                pb_utils.Logger.log_warn(f"refused as expected: {exc}")
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", x), pb_utils.Tensor("OUTPUT1", x)]))
        return responses
"""

#: BLS: MODEL_NAME (BYTES) picks the model; ``simple`` (ONNX) or the ensemble over it
BLS_SYNC = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            model = pb_utils.get_input_tensor_by_name(request, "MODEL_NAME").as_numpy().flat[0]
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            bls = pb_utils.InferenceRequest(
                model_name=model.decode(), requested_output_names=["OUTPUT0", "OUTPUT1"],
                inputs=[pb_utils.Tensor("INPUT0", a.as_numpy()),
                        pb_utils.Tensor("INPUT1", b.as_numpy())])
            response = bls.exec()
            if response.has_error():
                raise pb_utils.TritonModelException(response.error().message())
            responses.append(pb_utils.InferenceResponse([
                pb_utils.get_output_tensor_by_name(response, "OUTPUT0"),
                pb_utils.get_output_tensor_by_name(response, "OUTPUT1")]))
        return responses
"""

BLS_ASYNC = """
import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            model = pb_utils.get_input_tensor_by_name(request, "MODEL_NAME").as_numpy().flat[0]
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            calls = [pb_utils.InferenceRequest(
                model_name=model.decode(), requested_output_names=[name],
                inputs=[pb_utils.Tensor("INPUT0", a), pb_utils.Tensor("INPUT1", b)]).async_exec()
                for name in ("OUTPUT0", "OUTPUT1")]
            first, second = await asyncio.gather(*calls)
            for r in (first, second):
                if r.has_error():
                    raise pb_utils.TritonModelException(r.error().message())
            responses.append(pb_utils.InferenceResponse([
                pb_utils.get_output_tensor_by_name(first, "OUTPUT0"),
                pb_utils.get_output_tensor_by_name(second, "OUTPUT1")]))
        return responses
"""


def bls_config(name: str) -> str:
    return f'''
    name: "{name}"
    backend: "python"
    max_batch_size: 8
    input [
      {{ name: "MODEL_NAME" data_type: TYPE_STRING dims: [ 1 ] }},
      {{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }},
      {{ name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }}
    ]
    output [
      {{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }},
      {{ name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }}
    ]
    instance_group [ {{ kind: KIND_CPU }} ]
    '''


#: BLS to a decoupled model (square_int32) with exec(decoupled=True), summing the stream;
#: and a call to itself (N > 0 recurses with N - 1), which must not deadlock
BLS_DECOUPLED = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            n = pb_utils.get_input_tensor_by_name(request, "N").as_numpy()
            total = 0
            iterator = pb_utils.InferenceRequest(
                model_name="square_int32", requested_output_names=["OUT"],
                inputs=[pb_utils.Tensor("IN", n.astype(np.int32))]).exec(decoupled=True)
            for r in iterator:
                if r.has_error():
                    raise pb_utils.TritonModelException(r.error().message())
                out = pb_utils.get_output_tensor_by_name(r, "OUT")
                if out is not None:
                    total += int(out.as_numpy()[0])
            depth = 0
            if n[0] > 0:
                nested = pb_utils.InferenceRequest(
                    model_name="bls_decoupled", requested_output_names=["DEPTH"],
                    inputs=[pb_utils.Tensor("N", n - 1)]).exec()
                if nested.has_error():
                    raise pb_utils.TritonModelException(nested.error().message())
                depth = int(pb_utils.get_output_tensor_by_name(nested, "DEPTH").as_numpy()[0]) + 1
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("SUM", np.array([total], np.int32)),
                pb_utils.Tensor("DEPTH", np.array([depth], np.int32))]))
        return responses
"""

BLS_DECOUPLED_CONFIG = """
name: "bls_decoupled"
backend: "python"
input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [
  { name: "SUM" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "DEPTH" data_type: TYPE_INT32 dims: [ 1 ] }
]
instance_group [ { kind: KIND_CPU } ]
"""

#: crashes the way a broken extension or a stray exit does, when asked (MODE 1: segfault,
#: MODE 2: os._exit(3)); otherwise echoes
CRASHER = """
import ctypes
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            mode = int(pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0])
            if mode == 1:
                ctypes.string_at(0)
            if mode == 2:
                os._exit(3)
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "PID", np.array([os.getpid()], np.int64))]) for _ in requests]
"""

CRASHER_CONFIG = """
name: "crasher"
backend: "python"
input [ { name: "MODE" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "PID" data_type: TYPE_INT64 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""

#: an identity over FP32 [-1] (large tensors cross the process boundary through shared memory)
IDENTITY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() * 2)]) for r in requests]
"""

IDENTITY_CONFIG = """
name: "double"
backend: "python"
input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""

#: model control from model code: loads, checks and unloads the model named in NAME
LOADER = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            name = pb_utils.get_input_tensor_by_name(request, "NAME").as_numpy()[0].decode()
            steps = [pb_utils.is_model_ready(name)]
            pb_utils.load_model(name)
            steps.append(pb_utils.is_model_ready(name))
            pb_utils.unload_model(name)
            steps.append(pb_utils.is_model_ready(name))
            try:
                pb_utils.load_model("no_such_model")
                steps.append(True)
            except pb_utils.TritonModelException as exc:
                steps.append(str(exc).startswith("Failed to load model: "))
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("STEPS", np.array(steps, dtype=np.bool_))]))
        return responses
"""

LOADER_CONFIG = """
name: "loader"
backend: "python"
input [ { name: "NAME" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "STEPS" data_type: TYPE_BOOL dims: [ 4 ] } ]
"""

#: model control with a model sent along: loads NAME from CONFIG (JSON) and SOURCE (its
#: 1/model.py, as pb_utils.load_model's ``files``), and says whether it is ready
UPLOADER = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            name, config, source = (
                pb_utils.get_input_tensor_by_name(request, key).as_numpy()[0]
                for key in ("NAME", "CONFIG", "SOURCE"))
            name = name.decode()
            pb_utils.load_model(name, config=config.decode(), files={"file:1/model.py": source})
            ready = pb_utils.is_model_ready(name)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("READY", np.array([ready], dtype=np.bool_))]))
        return responses
"""

UPLOADER_CONFIG = """
name: "uploader"
backend: "python"
input [
  { name: "NAME" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "CONFIG" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "SOURCE" data_type: TYPE_STRING dims: [ 1 ] }
]
output [ { name: "READY" data_type: TYPE_BOOL dims: [ 1 ] } ]
"""

#: BLS with a correlation id and sequence flags (START, -, END) to simple_dyna_sequence; and a
#: plain exec() of a decoupled model, which must come back as Triton's error response
BLS_SEQUENCE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy().reshape(1, 1)
            outs = []
            for flags in (pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START, 0,
                          pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END):
                r = pb_utils.InferenceRequest(
                    model_name="simple_dyna_sequence", requested_output_names=["OUTPUT"],
                    inputs=[pb_utils.Tensor("INPUT", x.astype(np.int32))],
                    correlation_id=42, flags=flags).exec()
                if r.has_error():
                    raise pb_utils.TritonModelException(r.error().message())
                outs.append(int(pb_utils.get_output_tensor_by_name(r, "OUTPUT").as_numpy().flat[0]))
            wrong = pb_utils.InferenceRequest(
                model_name="square_int32", requested_output_names=["OUT"],
                inputs=[pb_utils.Tensor("IN", np.array([1], np.int32))]).exec()
            refused = wrong.has_error() and "is using the decoupled" in wrong.error().message()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", np.array(outs, np.int32)),
                pb_utils.Tensor("REFUSED", np.array([refused]))]))
        return responses
"""

BLS_SEQUENCE_CONFIG = """
name: "bls_sequence"
backend: "python"
input [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [
  { name: "Y" data_type: TYPE_INT32 dims: [ 3 ] },
  { name: "REFUSED" data_type: TYPE_BOOL dims: [ 1 ] }
]
"""

#: decoupled failures: MODE 0 raises, 1 returns a list (must return None), 2 streams one
#: response and then an error response with the final flag
DECOUPLED_ERRORS = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            mode = int(pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0])
            if mode == 0:
                raise pb_utils.TritonModelException("decoupled failure")
            if mode == 1:
                return [pb_utils.InferenceResponse()]
            sender = request.get_response_sender()
            sender.send(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", np.array([7], np.int32))]))
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                "late failure", pb_utils.TritonError.INVALID_ARG)),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

DECOUPLED_ERRORS_CONFIG = """
name: "decoupled_errors"
backend: "python"
model_transaction_policy { decoupled: true }
input [ { name: "MODE" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""
