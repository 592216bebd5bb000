#!/usr/bin/env python3
"""(Re)write naiad's Caffe2 ensemble example: JPEG bytes in, a classification out, the seed's
``image_preprocess -> resnet50_netdef`` pipeline with a tiny ResNet-style NetDef classifier.

    image_preprocess_nchw_3x224x224_inception
        as in make_ensemble.py: BYTES INPUT [1] -> FP32 OUTPUT [3, 224, 224] (NCHW, INCEPTION)
    resnet_tiny_netdef
        platform caffe2_netdef: model.netdef (predict net) + init_model.netdef (weights, one
        GivenTensorFill each), written the way Caffe2's model zoo nets are: legacy
        kernel/stride/pad arguments, Relu in place, Sum for the residual, AveragePool with
        global_pooling, FC, Softmax; blobs gpu_0/data (FP32 [3, 224, 224], FORMAT_NCHW) ->
        gpu_0/softmax (FP32 [1000], labels.txt). The same network and weights as
        make_ensemble.py's resnet_tiny_onnx, so the two answer alike.
    preprocess_inception_ensemble
        platform ensemble, the name NVIDIA's ensemble_image_client.py asks for: INPUT (BYTES [1],
        one encoded image per batch item) -> preprocess -> resnet_tiny_netdef -> OUTPUT (FP32
        [1000]); classification requests get resnet_tiny_netdef's labels.

All batch up to 8; the files are byte-identical on every run.

Usage:
    python examples/make_caffe2_ensemble.py [DIR]  # default: the folder below
    naiad serve --model-repository examples/caffe2_ensemble_model_repository

Needs numpy and naiad-backend-caffe2 (its NetDef schema). Only the three model folders are
replaced. Import this file by path to reuse the builders (``write_all(repo)``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_REPO = HERE / "caffe2_ensemble_model_repository"
CLASSIFIER = "resnet_tiny_netdef"
ENSEMBLE = "preprocess_inception_ensemble"
DATA, SOFTMAX = "gpu_0/data", "gpu_0/softmax"


def _make_ensemble():
    spec = importlib.util.spec_from_file_location("naiad_make_ensemble", HERE / "make_ensemble.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_ensemble = _make_ensemble()
PREPROCESS = make_ensemble.PREPROCESS
MAX_BATCH = make_ensemble.MAX_BATCH
CLASSES = make_ensemble.CLASSES

CLASSIFIER_CONFIG = f'''name: "{CLASSIFIER}"
platform: "caffe2_netdef"
max_batch_size: {MAX_BATCH}
input [
  {{
    name: "{DATA}"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
  }}
]
output [
  {{
    name: "{SOFTMAX}"
    data_type: TYPE_FP32
    dims: [ {CLASSES} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{ }}
'''

ENSEMBLE_CONFIG = (
    make_ensemble.ENSEMBLE_CONFIG.replace(
        f'name: "{make_ensemble.ENSEMBLE}"', f'name: "{ENSEMBLE}"'
    )
    .replace(f'"{make_ensemble.CLASSIFIER}"', f'"{CLASSIFIER}"')
    .replace('key: "data"', f'key: "{DATA}"')
    .replace('key: "prob"', f'key: "{SOFTMAX}"')
)


def build_classifier():
    """(predict net, init net) as caffe2_pb2 NetDef messages."""
    from naiad_backend_caffe2.caffe2_pb2 import Argument, NetDef, OperatorDef
    from naiad_backend_caffe2.export import fill_op

    def arg(name: str, value) -> Argument:
        return (
            Argument(name=name, s=value.encode())
            if isinstance(value, str)
            else Argument(name=name, i=value)
        )

    def op(op_type: str, inputs: list[str], outputs: list[str], **args) -> OperatorDef:
        return OperatorDef(
            type=op_type, input=inputs, output=outputs, arg=[arg(k, v) for k, v in args.items()]
        )

    def conv(x: str, name: str, out: str, stride: int = 1) -> list[OperatorDef]:
        return [
            op(
                "Conv",
                [x, f"{name}_w", f"{name}_b"],
                [out],
                kernel=3,
                stride=stride,
                pad=1,
                order="NCHW",
            ),
            op("Relu", [out], [out]),
        ]  # in place, as Caffe2 nets do

    def block(x: str, name: str) -> list[OperatorDef]:
        return conv(x, f"{name}a", f"{name}_a") + [
            op(
                "Conv",
                [f"{name}_a", f"{name}b_w", f"{name}b_b"],
                [f"{name}_b"],
                kernel=3,
                stride=1,
                pad=1,
                order="NCHW",
            ),
            op("Sum", [f"{name}_b", x], [f"{name}_sum"]),
            op("Relu", [f"{name}_sum"], [f"{name}_sum"]),
        ]

    ops = (
        conv(DATA, "stem", "stem_out", 2)
        + [op("MaxPool", ["stem_out"], ["pool"], kernel=3, stride=2, pad=1, order="NCHW")]
        + block("pool", "b1")
        + conv("b1_sum", "down", "down_out", 2)
        + block("down_out", "b2")
        + [
            op("AveragePool", ["b2_sum"], ["gap"], global_pooling=1, order="NCHW"),
            op("FC", ["gap", "fc_w", "fc_b"], ["logits"]),
            op("Softmax", ["logits"], [SOFTMAX]),
        ]
    )
    weights = make_ensemble.classifier_weights()
    weights["fc_w"] = np.ascontiguousarray(weights["fc_w"].T)  # FC keeps W as [out, in]
    predict = NetDef(
        name="resnet_tiny", op=ops, external_input=[DATA, *weights], external_output=[SOFTMAX]
    )
    init = NetDef(
        name="resnet_tiny_init",
        op=[fill_op(n, w) for n, w in weights.items()],
        external_output=list(weights),
    )
    return predict, init


def write_classifier(repo: Path) -> Path:
    from naiad_backend_caffe2.export import write_pair

    model_dir = make_ensemble._fresh(repo, CLASSIFIER, CLASSIFIER_CONFIG)
    write_pair(*build_classifier(), model_dir / "1")
    (model_dir / "labels.txt").write_text("\n".join(make_ensemble.labels()) + "\n")
    return model_dir


def write_ensemble(repo: Path) -> Path:
    model_dir = make_ensemble._fresh(repo, ENSEMBLE, ENSEMBLE_CONFIG)
    (model_dir / "1" / ".gitkeep").write_text("")
    return model_dir


def write_all(repo: Path) -> list[Path]:
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    return [make_ensemble.write_preprocess(repo), write_classifier(repo), write_ensemble(repo)]


def main(argv: list[str]) -> None:
    repo = Path(argv[0]) if argv else DEFAULT_REPO
    for model_dir in write_all(repo):
        print(f"wrote {model_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
