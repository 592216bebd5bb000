#!/usr/bin/env python3
"""(Re)write naiad's ensemble example repository: raw image bytes in, top-k labels out.

The seed's ``docs/examples/ensemble_model_repository`` (image_preprocess -> resnet50), with a tiny
ResNet-style classifier instead of ResNet-50 so the files stay small:

    image_preprocess_nchw_3x224x224_inception
        backend image_preprocess (pip install naiad-custom-example): BYTES INPUT [1], one encoded
        image per batch item -> FP32 OUTPUT [3, 224, 224], NCHW, INCEPTION scaling (x / 128 - 1)
    resnet_tiny_onnx
        ONNX: FP32 data [3, 224, 224] (FORMAT_NCHW) -> FP32 prob [1000], softmax, labels.txt.
        conv 3x3/2 (8) -> maxpool 3x3/2 -> residual block (8) -> conv 3x3/2 (16) -> residual
        block (16) -> global average pool -> fully connected (1000) -> softmax. Fixed random
        weights from numpy.random.default_rng(2019): it classifies nothing real, but its answers
        are deterministic, so tests can compare them with onnxruntime run by hand.
    preprocess_classifier
        platform ensemble: INPUT (BYTES [1]) -> image_preprocess -> "preprocessed_image" ->
        resnet_tiny_onnx -> OUTPUT (FP32 [1000]); classification requests get the labels of
        resnet_tiny_onnx's labels.txt, as TRTIS passed the composing model's labels on.

All batch up to 8. Opset 13, IR version 8; the files are byte-identical on every run.

Usage:
    python examples/make_ensemble.py [DIR]   # default DIR: examples/ensemble_model_repository
    naiad serve --model-repository examples/ensemble_model_repository

Needs numpy and onnx (and onnxruntime for the self-check). Only the three model folders are
replaced. Import this file by path to reuse the builders (``write_all(repo)``).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

OPSET = 13
IR_VERSION = 8
MAX_BATCH = 8
CLASSES = 1000
SEED = 2019
DEFAULT_REPO = Path(__file__).resolve().parent / "ensemble_model_repository"
PREPROCESS = "image_preprocess_nchw_3x224x224_inception"
CLASSIFIER = "resnet_tiny_onnx"
ENSEMBLE = "preprocess_classifier"

_COLOURS = ("red", "orange", "yellow", "green", "teal", "blue", "violet", "pink", "brown", "grey")
_PATTERNS = (
    "plain",
    "striped",
    "spotted",
    "checked",
    "dotted",
    "wavy",
    "zigzag",
    "marbled",
    "speckled",
    "woven",
)
_SHAPES = (
    "circle",
    "square",
    "triangle",
    "star",
    "heart",
    "ring",
    "arrow",
    "cross",
    "moon",
    "leaf",
)

PREPROCESS_CONFIG = f'''name: "{PREPROCESS}"
backend: "image_preprocess"
max_batch_size: {MAX_BATCH}
input [
  {{
    name: "INPUT"
    data_type: TYPE_STRING
    dims: [ 1 ]
  }}
]
output [
  {{
    name: "OUTPUT"
    data_type: TYPE_FP32
    dims: [ 3, 224, 224 ]
  }}
]
parameters [
  {{
    key: "format"
    value: {{ string_value: "NCHW" }}
  }},
  {{
    key: "scaling"
    value: {{ string_value: "INCEPTION" }}
  }}
]
'''

CLASSIFIER_CONFIG = f'''name: "{CLASSIFIER}"
platform: "onnxruntime_onnx"
max_batch_size: {MAX_BATCH}
input [
  {{
    name: "data"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
  }}
]
output [
  {{
    name: "prob"
    data_type: TYPE_FP32
    dims: [ {CLASSES} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{ }}
'''

ENSEMBLE_CONFIG = f'''name: "{ENSEMBLE}"
platform: "ensemble"
max_batch_size: {MAX_BATCH}
input [
  {{
    name: "INPUT"
    data_type: TYPE_STRING
    dims: [ 1 ]
  }}
]
output [
  {{
    name: "OUTPUT"
    data_type: TYPE_FP32
    dims: [ {CLASSES} ]
  }}
]
ensemble_scheduling {{
  step [
    {{
      model_name: "{PREPROCESS}"
      model_version: -1
      input_map {{
        key: "INPUT"
        value: "INPUT"
      }}
      output_map {{
        key: "OUTPUT"
        value: "preprocessed_image"
      }}
    }},
    {{
      model_name: "{CLASSIFIER}"
      model_version: -1
      input_map {{
        key: "data"
        value: "preprocessed_image"
      }}
      output_map {{
        key: "prob"
        value: "OUTPUT"
      }}
    }}
  ]
}}
'''


def labels() -> list[str]:
    """1000 made-up class names, ``"<colour> <pattern> <shape>"``."""
    return [f"{c} {p} {s}" for c in _COLOURS for p in _PATTERNS for s in _SHAPES]


# ---------------------------------------------------------------------------- the classifier


def classifier_weights() -> dict[str, np.ndarray]:
    """Every initializer of the classifier, drawn in a fixed order from default_rng(SEED)."""
    rng = np.random.default_rng(SEED)

    def conv(out_c: int, in_c: int) -> np.ndarray:
        fan_in = in_c * 9
        return (rng.standard_normal((out_c, in_c, 3, 3)) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    weights = {
        "stem_w": conv(8, 3),
        "b1a_w": conv(8, 8),
        "b1b_w": conv(8, 8),
        "down_w": conv(16, 8),
        "b2a_w": conv(16, 16),
        "b2b_w": conv(16, 16),
    }
    for name, w in list(weights.items()):
        weights[name.replace("_w", "_b")] = (rng.standard_normal(w.shape[0]) * 0.05).astype(
            np.float32
        )
    weights["fc_w"] = (rng.standard_normal((16, CLASSES)) * 0.5).astype(np.float32)
    weights["fc_b"] = (rng.standard_normal(CLASSES) * 0.1).astype(np.float32)
    return weights


def build_classifier():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def conv(x: str, name: str, out: str, stride: int = 1) -> list:
        return [
            helper.make_node(
                "Conv",
                [x, f"{name}_w", f"{name}_b"],
                [out],
                name=name,
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            )
        ]

    def relu(x: str, out: str) -> list:
        return [helper.make_node("Relu", [x], [out], name=f"relu_{out}")]

    def block(x: str, name: str) -> list:
        return (
            conv(x, f"{name}a", f"{name}_a")
            + relu(f"{name}_a", f"{name}_ar")
            + conv(f"{name}_ar", f"{name}b", f"{name}_b")
            + [helper.make_node("Add", [f"{name}_b", x], [f"{name}_sum"], name=f"{name}_add")]
            + relu(f"{name}_sum", f"{name}_out")
        )

    nodes = (
        conv("data", "stem", "stem_out", 2)
        + relu("stem_out", "stem_relu")
        + [
            helper.make_node(
                "MaxPool",
                ["stem_relu"],
                ["pool"],
                name="maxpool",
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[2, 2],
            )
        ]
        + block("pool", "b1")
        + conv("b1_out", "down", "down_out", 2)
        + relu("down_out", "down_relu")
        + block("down_relu", "b2")
        + [
            helper.make_node("GlobalAveragePool", ["b2_out"], ["gap"], name="gap"),
            helper.make_node("Flatten", ["gap"], ["features"], name="flatten", axis=1),
            helper.make_node("MatMul", ["features", "fc_w"], ["fc_mm"], name="fc"),
            helper.make_node("Add", ["fc_mm", "fc_b"], ["logits"], name="fc_bias"),
            helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1),
        ]
    )
    initializers = [numpy_helper.from_array(a, n) for n, a in classifier_weights().items()]
    graph = helper.make_graph(
        nodes,
        "resnet_tiny",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, producer_name="naiad-examples", opset_imports=[helper.make_opsetid("", OPSET)]
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------------- repository


def _fresh(repo: Path, name: str, config: str) -> Path:
    model_dir = Path(repo) / name
    if model_dir.is_dir():
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(config)
    return model_dir


def write_preprocess(repo: Path) -> Path:
    model_dir = _fresh(repo, PREPROCESS, PREPROCESS_CONFIG)
    (model_dir / "1" / ".gitkeep").write_text("")  # no model file: the plugin is the code
    return model_dir


def write_classifier(repo: Path) -> Path:
    import onnx

    model_dir = _fresh(repo, CLASSIFIER, CLASSIFIER_CONFIG)
    onnx.save(build_classifier(), str(model_dir / "1" / "model.onnx"))
    (model_dir / "labels.txt").write_text("\n".join(labels()) + "\n")
    return model_dir


def write_ensemble(repo: Path) -> Path:
    model_dir = _fresh(repo, ENSEMBLE, ENSEMBLE_CONFIG)
    (model_dir / "1" / ".gitkeep").write_text("")  # ensembles need an (empty) version folder
    return model_dir


def write_all(repo: Path) -> list[Path]:
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    return [write(repo) for write in (write_preprocess, write_classifier, write_ensemble)]


def self_check(repo: Path) -> None:
    """Run the classifier once with onnxruntime: probabilities of the right shape summing to 1."""
    import onnxruntime as ort

    path = str(Path(repo) / CLASSIFIER / "1" / "model.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32)
    (prob,) = session.run(None, {"data": x})
    assert prob.shape == (2, CLASSES), prob.shape
    assert np.allclose(prob.sum(axis=1), 1.0, atol=1e-4), "softmax"


def main(argv: list[str]) -> None:
    repo = Path(argv[0]) if argv else DEFAULT_REPO
    for model_dir in write_all(repo):
        print(f"wrote {model_dir}")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("onnxruntime not installed: self-check skipped")
        return
    self_check(repo)
    print("onnxruntime self-check ok")


if __name__ == "__main__":
    main(sys.argv[1:])
