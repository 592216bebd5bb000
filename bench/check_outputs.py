#!/usr/bin/env python3
"""Check a server's answers for the bench models before timing it (perf_analyzer never looks at
outputs): tritonclient.http infer at batch 1 and 3, JSON and binary tensors, against numpy /
in-process onnxruntime references.

    .venv/bin/python bench/check_outputs.py HOST:PORT MODEL [MODEL...] [--json-only]

Models named mlp* are compared with anchors/models/make_mlp.reference_mlp, convnet* with
make_convnet.build() run in this process by onnxruntime. Prints one line per model; exits 1 on any
mismatch or error. Needs tritonclient[http], numpy and (for convnet) onnx + onnxruntime.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ANCHORS = Path(os.environ.get("ANCHORS", HERE.parent.parent / "shared" / "anchors")).resolve()
sys.path.insert(0, str(ANCHORS / "models"))
sys.path.insert(0, str(HERE))


def reference(model: str):
    if model.startswith("mlp"):
        import make_mlp

        return (lambda x: make_mlp.reference_mlp(x)), (16,)
    if model.startswith("convnet"):
        import make_convnet
        import onnxruntime as ort

        sess = ort.InferenceSession(
            make_convnet.build().SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return (lambda x: sess.run(["output"], {"input": x})[0]), (3, 224, 224)
    raise SystemExit(f"no reference for model {model!r}")


def main() -> int:
    import tritonclient.http as http

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--json-only", action="store_true", help="no binary tensors (MLServer)")
    a = ap.parse_args()
    client = http.InferenceServerClient(a.url, network_timeout=120)
    bad = 0
    for model in a.models:
        fn, shape = reference(model)
        msgs = []
        for batch in (1, 3):
            x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
            want = fn(x)
            for binary in (False,) if a.json_only else (False, True):
                inp = http.InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=binary)
                out = http.InferRequestedOutput("output", binary_data=binary)
                kind = f"b{batch} {'binary' if binary else 'json'}"
                try:
                    got = client.infer(model, [inp], outputs=[out]).as_numpy("output")
                except Exception as e:
                    msgs.append(f"{kind}: ERROR {type(e).__name__}: {e}")
                    continue
                tol = 1e-3 * max(1.0, float(np.abs(want).max()))
                if (
                    got is None
                    or got.shape != want.shape
                    or not np.allclose(got, want, atol=tol, rtol=1e-3)
                ):
                    diff = (
                        "-"
                        if got is None or got.shape != want.shape
                        else f"{float(np.abs(got - want).max()):.3g}"
                    )
                    msgs.append(
                        f"{kind}: MISMATCH shape {None if got is None else got.shape} "
                        f"vs {want.shape}, max |diff| {diff}"
                    )
        bad += bool(msgs)
        print(f"{a.url} {model}: " + ("ok" if not msgs else "; ".join(msgs)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
