"""Small real TensorFlow models written into a test's folder, with their Triton configs.

Shared by this plugin's tests and ``tests/test_tensorflow_e2e.py`` (which loads this file by
path). Importing it imports tensorflow. No Keras: plain ``tf.Module`` / ``tf.function`` and
``tf.compat.v1`` graphs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

RNG = np.random.default_rng(7)
W1, B1, W2, B2 = (
    RNG.standard_normal(s).astype(np.float32) for s in ((8, 32), (32,), (32, 4), (4,))
)
KERNEL = RNG.standard_normal((3, 3, 3, 8)).astype(np.float32)
HEAD = RNG.standard_normal((8 * 8 * 8, 10)).astype(np.float32)

# Triton's simple_string (seed era: a tensorflow_graphdef model); the savedmodel variant reuses it
SIMPLE_STRING_CONFIG = """
max_batch_size: 8
input [ { name: "INPUT0", data_type: TYPE_STRING, dims: [ 16 ] },
        { name: "INPUT1", data_type: TYPE_STRING, dims: [ 16 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_STRING, dims: [ 16 ] },
         { name: "OUTPUT1", data_type: TYPE_STRING, dims: [ 16 ] } ]
"""

CONV_CONFIG = """
platform: "tensorflow_savedmodel"
max_batch_size: 16
input [ { name: "image", data_type: TYPE_FP32, dims: [ 16, 16, 3 ], format: FORMAT_NHWC } ]
output [ { name: "logits", data_type: TYPE_FP32, dims: [ 10 ] },
         { name: "features", data_type: TYPE_FP32, dims: [ 8, 8, 8 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""


def mlp_numpy(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ W1 + B1, 0) @ W2 + B2


class MLP(tf.Module):
    """x FP32 [batch, 8] -> y FP32 [batch, 4], weights as variables."""

    def __init__(self) -> None:
        super().__init__()
        self.w1, self.b1 = tf.Variable(W1), tf.Variable(B1)
        self.w2, self.b2 = tf.Variable(W2), tf.Variable(B2)

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        hidden = tf.nn.relu(tf.matmul(x, self.w1) + self.b1)
        return {"y": tf.matmul(hidden, self.w2) + self.b2}

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    def hidden(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"h": tf.nn.relu(tf.matmul(x, self.w1) + self.b1)}


class ConvNet(tf.Module):
    """image FP32 [batch, 16, 16, 3] -> logits [batch, 10], features [batch, 8, 8, 8] (NHWC)."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel, self.head = tf.Variable(KERNEL), tf.Variable(HEAD)

    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
    def __call__(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        conv = tf.nn.relu(tf.nn.conv2d(image, self.kernel, strides=1, padding="SAME"))
        features = tf.nn.max_pool2d(conv, ksize=2, strides=2, padding="VALID")
        logits = tf.matmul(tf.reshape(features, [-1, 8 * 8 * 8]), self.head)
        return {"logits": logits, "features": features}


def simple_string(a: tf.Tensor, b: tf.Tensor) -> dict[str, tf.Tensor]:
    """Decimal strings in, their sum and difference as decimal strings out."""
    x, y = tf.strings.to_number(a, tf.int32), tf.strings.to_number(b, tf.int32)
    return {"OUTPUT0": tf.strings.as_string(x + y), "OUTPUT1": tf.strings.as_string(x - y)}


class SimpleString(tf.Module):
    @tf.function(
        input_signature=[tf.TensorSpec([None, 16], tf.string), tf.TensorSpec([None, 16], tf.string)]
    )
    def __call__(self, INPUT0: tf.Tensor, INPUT1: tf.Tensor) -> dict[str, tf.Tensor]:
        return simple_string(INPUT0, INPUT1)


def save(module: tf.Module, version_dir: Path, **signatures: object) -> Path:
    """``tf.saved_model.save`` to ``version_dir/model.savedmodel`` (``__call__`` as default)."""
    version_dir.mkdir(parents=True, exist_ok=True)
    sigs = {"serving_default": module.__call__, **signatures}
    tf.saved_model.save(module, str(version_dir / "model.savedmodel"), signatures=sigs)
    return version_dir


def write_graphdef(version_dir: Path, build, filename: str = "model.graphdef") -> Path:
    """A frozen GraphDef made by ``build()`` inside a fresh ``tf.compat.v1`` graph."""
    version_dir.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        build()
    (version_dir / filename).write_bytes(graph.as_graph_def().SerializeToString())
    return version_dir


def build_simple_string_graph() -> None:
    """Placeholders INPUT0/INPUT1 [?, 16] string -> OUTPUT0/OUTPUT1 (Triton's names)."""
    a = tf.compat.v1.placeholder(tf.string, [None, 16], name="INPUT0")
    b = tf.compat.v1.placeholder(tf.string, [None, 16], name="INPUT1")
    for name, value in simple_string(a, b).items():
        tf.identity(value, name=name)


def build_mlp_graph() -> None:
    """x [?, 8] -> y [?, 4] with the MLP's weights as constants (a frozen graph)."""
    x = tf.compat.v1.placeholder(tf.float32, [None, 8], name="x")
    hidden = tf.nn.relu(tf.matmul(x, tf.constant(W1)) + tf.constant(B1))
    tf.identity(tf.matmul(hidden, tf.constant(W2)) + tf.constant(B2), name="y")


def strings(values: np.ndarray) -> np.ndarray:
    """An int array as a BYTES (object) array of decimal strings."""
    out = np.empty(values.shape, dtype=object)
    out.reshape(-1)[:] = [str(int(v)).encode() for v in values.reshape(-1)]
    return out


def write_repository(repo: Path) -> Path:
    """What the end-to-end test serves: ``mlp`` (SavedModel, no config: auto-completed),
    ``conv`` (SavedModel), ``simple_string`` (GraphDef, Triton's seed example) and
    ``simple_string_savedmodel``."""
    save(MLP(), repo / "mlp" / "1")
    save(ConvNet(), repo / "conv" / "1")
    (repo / "conv" / "config.pbtxt").write_text(CONV_CONFIG)
    write_graphdef(repo / "simple_string" / "1", build_simple_string_graph)
    (repo / "simple_string" / "config.pbtxt").write_text(
        'platform: "tensorflow_graphdef"' + SIMPLE_STRING_CONFIG
    )
    save(SimpleString(), repo / "simple_string_savedmodel" / "1")
    (repo / "simple_string_savedmodel" / "config.pbtxt").write_text(
        'platform: "tensorflow_savedmodel"' + SIMPLE_STRING_CONFIG
    )
    return repo
