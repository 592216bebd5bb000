#!/usr/bin/env python3
"""A small ResNet-style ONNX conv net for the batching benchmark (issue 5), and Triton repositories
serving it.

    python bench/make_convnet.py OUT_REPO [--kind onnx|python] [--name convnet]
                                 [--max-batch 16] [--no-dynamic] [--instances 1] [--threads 0]
    python bench/make_convnet.py --onnx FILE          # only the .onnx file

The network (FP32 "input" [batch, 3, 224, 224] -> FP32 "output" [batch, 10]), ~0.3 GMAC per image:
  stem    Conv 7x7/2, 3->32, ReLU; MaxPool 3x3/2                       -> 32 x 56 x 56
  stage1  basic block 32  (Conv3x3-ReLU-Conv3x3, + identity, ReLU)      -> 32 x 56 x 56
  stage2  basic block 64,  stride 2, 1x1/2 projection shortcut          -> 64 x 28 x 28
  stage3  basic block 128, stride 2, 1x1/2 projection shortcut          -> 128 x 14 x 14
  stage4  basic block 256, stride 2, 1x1/2 projection shortcut          -> 256 x 7 x 7
  head    GlobalAveragePool, Flatten, Gemm 256->10
Batch norm is taken as folded into the conv weights and biases (inference form). Weights are fixed:
He-normal from numpy.random.default_rng(seed) (default 0), biases small; opset 13, IR 8. Built with
onnx.helper only; nothing is downloaded.

--kind onnx   writes OUT_REPO/NAME/1/model.onnx, platform onnxruntime_onnx (naiad's onnx backend)
--kind python writes OUT_REPO/NAME/1/{model.py,model.onnx}: a Triton python-backend model whose
              model.py runs the same ONNX file with onnxruntime on the CPU, one session per
              instance, concatenating the requests of a batch and splitting the output back per
              request.
Both: max_batch_size --max-batch (16), dynamic_batching { } unless --no-dynamic, one KIND_CPU
instance (--instances). Intra-op threads: --threads N > 0 writes parameters intra_op_thread_count
(naiad, Triton's onnxruntime backend) / is used by model.py; 0 (default) leaves naiad's default
(the process's CPUs / instances) and makes model.py use os.cpu_count() / instances: the same.
Needs numpy and onnx.
"""

from __future__ import annotations

import argparse
import os
import shutil

import numpy as np

C, H, W = 3, 224, 224
CLASSES = 10
OPSET, IR = 13, 8


def build(seed: int = 0):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    counter = [0]

    def name(p):
        counter[0] += 1
        return f"{p}{counter[0]}"

    def conv(x, cin, cout, k, stride, relu):
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(
            np.float32
        )
        b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
        wn, bn, y = name("w"), name("b"), name("conv")
        inits.extend([numpy_helper.from_array(w, wn), numpy_helper.from_array(b, bn)])
        nodes.append(
            helper.make_node(
                "Conv",
                [x, wn, bn],
                [y],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[k // 2] * 4,
                name=y,
            )
        )
        if relu:
            r = name("relu")
            nodes.append(helper.make_node("Relu", [y], [r], name=r))
            return r
        return y

    def block(x, cin, cout, stride):
        h = conv(x, cin, cout, 3, stride, relu=True)
        h = conv(h, cout, cout, 3, 1, relu=False)
        short = x if (cin == cout and stride == 1) else conv(x, cin, cout, 1, stride, relu=False)
        s, r = name("add"), name("relu")
        nodes.append(helper.make_node("Add", [h, short], [s], name=s))
        nodes.append(helper.make_node("Relu", [s], [r], name=r))
        return r

    x = conv("input", C, 32, 7, 2, relu=True)
    nodes.append(
        helper.make_node(
            "MaxPool",
            [x],
            ["pool"],
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            name="maxpool",
        )
    )
    x, cin = "pool", 32
    for cout, stride in ((32, 1), (64, 2), (128, 2), (256, 2)):
        x = block(x, cin, cout, stride)
        cin = cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1, name="flatten"))
    fw = (rng.standard_normal((cin, CLASSES)) * np.sqrt(1.0 / cin)).astype(np.float32)
    fb = np.zeros(CLASSES, np.float32)
    inits += [numpy_helper.from_array(fw, "fc_w"), numpy_helper.from_array(fb, "fc_b")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["output"], name="fc"))

    graph = helper.make_graph(
        nodes,
        "bench_convnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", C, H, W])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        producer_name="naiad-bench-make_convnet",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR
    onnx.checker.check_model(model)
    return model


PY_MODEL = '''"""Triton python-backend model: bench/make_convnet.py's ONNX conv net, run with
onnxruntime."""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        params = config.get("parameters", {})
        threads = int(params.get("intra_op_thread_count", {}).get("string_value", "0") or 0)
        if threads <= 0:  # naiad's default: the CPUs split between the model's instances
            count = sum(g.get("count", 1) for g in config.get("instance_group", [])) or 1
            threads = max(1, (os.cpu_count() or 1) // count)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, sess_options=so,
                                            providers=["CPUExecutionProvider"])

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, "input").as_numpy() for r in requests]
        x = xs[0] if len(xs) == 1 else np.concatenate(xs)
        y = self.session.run(["output"], {"input": x})[0]
        responses, start = [], 0
        for part in xs:
            n = part.shape[0]
            out = pb_utils.Tensor("output", np.ascontiguousarray(y[start:start + n]))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += n
        return responses
'''


def _tensor(name: str, dtype: str, dims: str, section: str) -> str:
    body = f'    name: "{name}"\n    data_type: {dtype}\n    dims: [ {dims} ]'
    return f"{section} [\n  {{\n{body}\n  }}\n]"


def config(
    name: str, head: str, max_batch: int, dynamic: bool, instances: int, threads: int
) -> str:
    parts = [
        f'name: "{name}"',
        head,
        f"max_batch_size: {max_batch}",
        _tensor("input", "TYPE_FP32", f"{C}, {H}, {W}", "input"),
        _tensor("output", "TYPE_FP32", str(CLASSES), "output"),
        f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]",
    ]
    if dynamic:
        parts.append("dynamic_batching { }")
    if threads > 0:
        parts.append(
            'parameters {\n  key: "intra_op_thread_count"\n'
            f'  value {{ string_value: "{threads}" }}\n}}'
        )
    return "\n".join(parts) + "\n"


def write_model(
    repo: str,
    name: str = "convnet",
    kind: str = "onnx",
    max_batch: int = 16,
    dynamic: bool = True,
    instances: int = 1,
    threads: int = 0,
    seed: int = 0,
) -> str:
    import onnx

    mdir = os.path.join(repo, name)
    if os.path.isdir(mdir):
        shutil.rmtree(mdir)
    vdir = os.path.join(mdir, "1")
    os.makedirs(vdir)
    onnx.save(build(seed), os.path.join(vdir, "model.onnx"))
    if kind == "python":
        head = 'backend: "python"'
        with open(os.path.join(vdir, "model.py"), "w") as f:
            f.write(PY_MODEL)
    else:
        head = 'platform: "onnxruntime_onnx"'
    with open(os.path.join(mdir, "config.pbtxt"), "w") as f:
        f.write(config(name, head, max_batch, dynamic, instances, threads))
    return mdir


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", nargs="?")
    ap.add_argument("--onnx", help="only write the ONNX file here")
    ap.add_argument("--kind", choices=("onnx", "python"), default="onnx")
    ap.add_argument("--name", default="convnet")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--no-dynamic", action="store_true")
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.onnx:
        import onnx

        onnx.save(build(a.seed), a.onnx)
        print(f"wrote {a.onnx}")
    elif a.repo:
        print(
            "wrote",
            write_model(
                a.repo,
                a.name,
                a.kind,
                a.max_batch,
                not a.no_dynamic,
                a.instances,
                a.threads,
                a.seed,
            ),
            f"({a.kind})",
        )
    else:
        ap.error("give OUT_REPO or --onnx FILE")


if __name__ == "__main__":
    main()
