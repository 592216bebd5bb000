#!/usr/bin/env python3
"""The model repository of bench/batching.py: each model with and without dynamic batching.

    python bench/make_batching_repo.py OUT_DIR [--kind onnx|python] [--delay-us 0]
                                       [--mlp-max-batch 64] [--conv-max-batch 16]
                                       [--conv-threads 1]

    mlp_batch        anchors' 16->64->16 MLP, max_batch_size 64, dynamic_batching
    mlp_nobatch      the same without dynamic_batching (default scheduler)
    convnet_batch    make_convnet.py's conv net, max_batch_size 16, dynamic_batching
    convnet_nobatch  the same without dynamic_batching

--kind onnx (naiad; Triton's onnxruntime backend): model.onnx files, platform onnxruntime_onnx.
--kind python (the pip-installable tritonserver, python backend only): the MLP is the anchors'
  python model (numpy, anchors/models/make_repo.py), the conv net make_convnet.py's model.py
  (onnxruntime inside the stub).
dynamic_batching is Triton's default form, `dynamic_batching { }` (max_queue_delay 0), or with
--delay-us N `max_queue_delay_microseconds: N`. One KIND_CPU instance each. The conv net gets
parameters intra_op_thread_count = --conv-threads (default 1; 0 leaves naiad's default, the CPUs
divided by the instances, which make_convnet's model.py follows too). Needs numpy and onnx.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ANCHORS = Path(os.environ.get("ANCHORS", HERE.parent.parent / "shared" / "anchors")).resolve()
sys.path.insert(0, str(ANCHORS / "models"))
sys.path.insert(0, str(HERE))
import make_convnet  # noqa: E402
import make_mlp  # noqa: E402
import make_repo  # noqa: E402

MODELS = ("mlp_batch", "mlp_nobatch", "convnet_batch", "convnet_nobatch")


def _set_batching(cfg_path: Path, dynamic: bool, delay_us: int) -> None:
    text = cfg_path.read_text().replace("dynamic_batching { }\n", "")
    if dynamic:
        text += (
            "dynamic_batching { }\n"
            if not delay_us
            else f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n}}\n"
        )
    cfg_path.write_text(text)


def write(
    out: Path,
    kind: str,
    delay_us: int = 0,
    mlp_max_batch: int = 64,
    conv_max_batch: int = 16,
    conv_threads: int = 1,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        dynamic = name.endswith("_batch")
        mdir = out / name
        if mdir.exists():
            shutil.rmtree(mdir)
        if name.startswith("mlp"):
            (mdir / "1").mkdir(parents=True)
            io_in = [("input", "TYPE_FP32", [make_mlp.IN_DIM])]
            io_out = [("output", "TYPE_FP32", [make_mlp.OUT_DIM])]
            if kind == "python":
                head = 'backend: "python"'
                (mdir / "1" / "model.py").write_text(make_repo.PY_MODELS["mlp"])
                w1, b1, w2, b2 = make_mlp.mlp_weights()
                np.savez(mdir / "1" / "weights.npz", w1=w1, b1=b1, w2=w2, b2=b2)
            else:
                import onnx

                head = 'platform: "onnxruntime_onnx"'
                onnx.save(make_mlp.build_model(), str(mdir / "1" / "model.onnx"))
            (mdir / "config.pbtxt").write_text(
                make_repo._config(name, head, mlp_max_batch, io_in, io_out, False, 1)
            )
        else:
            make_convnet.write_model(str(out), name, kind, conv_max_batch, False, 1, conv_threads)
        _set_batching(mdir / "config.pbtxt", dynamic, delay_us)
        print(f"wrote {mdir} ({kind}, {'dynamic batching' if dynamic else 'no batching'})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--kind", choices=("onnx", "python"), default="onnx")
    ap.add_argument("--delay-us", type=int, default=0)
    ap.add_argument("--mlp-max-batch", type=int, default=64)
    ap.add_argument("--conv-max-batch", type=int, default=16)
    ap.add_argument(
        "--conv-threads",
        type=int,
        default=1,
        help="conv net intra-op threads (parameters intra_op_thread_count; 0: default)",
    )
    a = ap.parse_args()
    write(Path(a.out), a.kind, a.delay_us, a.mlp_max_batch, a.conv_max_batch, a.conv_threads)


if __name__ == "__main__":
    main()
