#!/usr/bin/env python3
"""Write the sequence-batcher bench models (one CPU instance each, max_batch_size 32).

    seq_direct    OUTPUT = READY * (INPUT + START)   Triton's simple_sequence; Direct strategy
    seq_implicit  accumulator kept as implicit state  (acc = INPUT on START, else acc + INPUT);
                  Direct strategy
    seq_oldest    the same accumulator, Oldest strategy (64 candidate sequences, no queue delay)

    python bench/make_sequence_repo.py OUT [--kind onnx|python]

--kind onnx writes the ONNX graphs of examples/make_models.py (naiad); --kind python writes Triton
python-backend models with the same arithmetic (the pip-installable Triton has only that
backend; it reads INPUT_STATE and returns OUTPUT_STATE as an output, Triton's implicit state API).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_BATCH = 32

PYTHON_MODEL = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            def get(name):
                return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

            x, start, ready = get("INPUT"), get("START"), get("READY")
            outputs = []
            if STATEFUL:
                state = get("INPUT_STATE")
                acc = np.where(ready != 0, np.where(start != 0, 0, state) + x, state)
                acc = acc.astype(np.int32)
                outputs = [pb_utils.Tensor("OUTPUT", acc), pb_utils.Tensor("OUTPUT_STATE", acc)]
            else:
                outputs = [pb_utils.Tensor("OUTPUT", (ready * (x + start)).astype(np.int32))]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
"""


def _make_models():
    path = ROOT / "examples" / "make_models.py"
    spec = importlib.util.spec_from_file_location("make_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(out: Path, kind: str) -> None:
    mm = _make_models()
    oldest = "oldest {\n    max_candidate_sequences: 64\n    max_queue_delay_microseconds: 0\n  }"
    models = {
        "seq_direct": (False, ""),
        "seq_implicit": (True, ""),
        "seq_oldest": (True, oldest),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, (stateful, strategy) in models.items():
        config = mm.sequence_config(
            name, ["START", "READY"], strategy=strategy, implicit_state=stateful, instances=1
        ).replace("max_batch_size: 8", f"max_batch_size: {MAX_BATCH}")
        if kind == "onnx":
            graph = mm.build_sequence_accumulator() if stateful else mm.build_simple_sequence()
            mm.write_model(out, name, graph, config)
            continue
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "1").mkdir(parents=True)
        config = config.replace('platform: "onnxruntime_onnx"', 'backend: "python"')
        (folder / "config.pbtxt").write_text(config)
        code = PYTHON_MODEL.replace("STATEFUL", str(stateful))
        (folder / "1" / "model.py").write_text(code)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--kind", choices=["onnx", "python"], default="onnx")
    a = ap.parse_args()
    write(Path(a.out), a.kind)


if __name__ == "__main__":
    main()
