#!/usr/bin/env python3
"""The same networks served by naiad as Caffe2 NetDef pairs and as ONNX files (issue 17; target:
the NetDef model at >= 0.9x the ONNX model's throughput).

    .venv/bin/python bench/caffe2_vs_onnx.py [-s 5] [-w 2] [-c 1,8] [-r 2] [--port 27700]
                                             [--models resnet_tiny,resnet_blocks] [--out DIR]

Networks, each written twice into one repository, with configs equal but for the platform:
- resnet_tiny: the example classifier, FP32 [b, 3, 224, 224] -> [b, 1000] (conv stem, max pool,
  two residual blocks, global pool, FC, softmax): examples/ensemble_model_repository's
  model.onnx beside examples/caffe2_ensemble_model_repository's NetDef pair (same weights,
  written independently).
- resnet_blocks: the tests' ResNet-style block stack with batch norms, FP32 [b, 3, 64, 64] ->
  [b, 10], exported from PyTorch to ONNX once and that ONNX model written as a NetDef pair by
  naiad_backend_caffe2.export.
Both sides: max_batch_size 8, dynamic batching, one KIND_CPU instance (so both sessions get all
CPUs as intra-op threads). The answers of the two are compared before measuring.

Then both backends' execute() in this process, alternately (--inprocess-rounds): the converted
graph against the ONNX file with no HTTP in between, which a noisy machine disturbs less.

Load: ../shared/anchors/loadgen.py (binary tensors, batch 1, C clients in a closed loop) from
.bench-venvs/loadgen (bash bench/setup.sh, or the anchors' setup_loadgen.sh). Each round runs
every level on both models, alternating which goes first. Rows go to bench/results/.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

ROOT = benchlib.ROOT
MODELS = {"resnet_tiny": ((3, 224, 224), 1000), "resnet_blocks": ((3, 64, 64), 10)}
CONFIG = """platform: "{platform}"
max_batch_size: 8
input [ {{ name: "{input}" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
output [ {{ name: "{output}" data_type: TYPE_FP32 dims: [ {classes} ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
dynamic_batching {{ }}
"""


def _config(platform: str, names: tuple[str, str], shape, classes: int) -> str:
    dims = ", ".join(map(str, shape))
    return CONFIG.format(platform=platform, input=names[0], output=names[1], dims=dims,
                         classes=classes)  # fmt: skip


def write_repo(repo: Path, which: list[str]) -> dict[str, tuple[str, str]]:
    """Both forms of each network; model name -> (input blob, output blob)."""
    names: dict[str, tuple[str, str]] = {}
    if "resnet_tiny" in which:
        shape, classes = MODELS["resnet_tiny"]
        onnx_dir = ROOT / "examples" / "ensemble_model_repository" / "resnet_tiny_onnx" / "1"
        netdef_dir = ROOT / "examples" / "caffe2_ensemble_model_repository" / "resnet_tiny_netdef"
        for name, src, platform, io_names in (
            ("resnet_tiny_onnx", onnx_dir, "onnxruntime_onnx", ("data", "prob")),
            ("resnet_tiny_netdef", netdef_dir / "1", "caffe2_netdef",
             ("gpu_0/data", "gpu_0/softmax")),
        ):  # fmt: skip
            shutil.copytree(src, repo / name / "1")
            (repo / name / "config.pbtxt").write_text(_config(platform, io_names, shape, classes))
            names[name] = io_names
    if "resnet_blocks" in which:
        import onnx
        import torch
        from naiad_backend_caffe2.export import from_onnx, write_pair

        shape, classes = MODELS["resnet_blocks"]
        path = ROOT / "plugins" / "backend-caffe2" / "tests" / "naiad_caffe2_models.py"
        spec = importlib.util.spec_from_file_location("naiad_caffe2_models_bench", path)
        models = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(models)
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(models.resnetish(), (torch.zeros(1, *shape),), buffer,
                              input_names=["data"], output_names=["prob"], opset_version=13,
                              dynamic_axes={"data": {0: "b"}, "prob": {0: "b"}}, dynamo=False,
                              do_constant_folding=False,
                              training=torch.onnx.TrainingMode.PRESERVE)  # fmt: skip
        source = onnx.load_from_string(buffer.getvalue())
        (repo / "resnet_blocks_onnx" / "1").mkdir(parents=True)
        onnx.save(source, str(repo / "resnet_blocks_onnx" / "1" / "model.onnx"))
        write_pair(*from_onnx(source), repo / "resnet_blocks_netdef" / "1")
        for name, platform in (("resnet_blocks_onnx", "onnxruntime_onnx"),
                               ("resnet_blocks_netdef", "caffe2_netdef")):  # fmt: skip
            text = _config(platform, ("data", "prob"), shape, classes)
            (repo / name / "config.pbtxt").write_text(text)
            names[name] = ("data", "prob")
    return names


def check_answers(url: str, base: str, names: dict[str, tuple[str, str]]) -> float:
    """Max abs difference of the two forms' answers to the same batch."""
    import tritonclient.http as httpclient

    shape = MODELS[base][0]
    x = np.random.default_rng(0).uniform(-1, 1, (4, *shape)).astype(np.float32)
    client = httpclient.InferenceServerClient(url.split("://", 1)[1])
    answers = []
    for kind in ("onnx", "netdef"):
        model = f"{base}_{kind}"
        inp = httpclient.InferInput(names[model][0], list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        answers.append(client.infer(model, [inp]).as_numpy(names[model][1]))
    client.close()
    return float(np.abs(answers[0] - answers[1]).max())


def optimized_ops(repo: Path, base: str) -> list[str]:
    """Operator counts of both forms' graphs after onnxruntime's optimisations (ENABLE_ALL, as
    naiad runs them): equal counts mean equal work per request, whatever the noise."""
    import collections
    import tempfile

    import onnx
    import onnxruntime as ort
    from naiad.config import parse_model_config
    from naiad_backend_caffe2 import build_onnx

    cells = []
    for kind in ("onnx", "netdef"):
        model = repo / f"{base}_{kind}"
        if kind == "onnx":
            source = str(model / "1" / "model.onnx")
        else:
            config = parse_model_config((model / "config.pbtxt").read_text(), model_name=kind)
            source = build_onnx(config, model / "1").SerializeToString()
        with tempfile.TemporaryDirectory() as tmp:
            options = ort.SessionOptions()
            options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            options.log_severity_level = 3  # not the "hardware specific" warning
            ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
            nodes = onnx.load(options.optimized_model_filepath).graph.node
        counts = collections.Counter(n.op_type for n in nodes)
        cells.append(", ".join(f"{t} {n}" for t, n in sorted(counts.items())))
    return [base, *cells]


def inprocess(
    repo: Path, names: dict[str, tuple[str, str]], base: str, rounds: int, seconds: float
) -> list[list[str]]:
    """Both backends' execute() called directly, alternately, ``seconds`` per batch size and
    round: the converted graph against the ONNX file without HTTP in between (medians)."""
    import time

    from naiad.backend import InstanceContext
    from naiad.config import parse_model_config
    from naiad_backend_caffe2 import Caffe2Backend
    from naiad_backend_onnx import OnnxBackend

    backends = {}
    for kind, cls in (("onnx", OnnxBackend), ("netdef", Caffe2Backend)):
        model = f"{base}_{kind}"
        config = parse_model_config((repo / model / "config.pbtxt").read_text(), model_name=model)
        backends[kind] = cls(config, repo / model, repo / model / "1",
                             InstanceContext(f"{model}_0", "KIND_CPU"))  # fmt: skip
        backends[kind].load()
    table = []
    for size in (1, 8):
        x = np.random.default_rng(size).uniform(-1, 1, (size, *MODELS[base][0]))
        x = x.astype(np.float32)
        rates: dict[str, list[float]] = {"onnx": [], "netdef": []}
        for rnd in range(rounds):
            for kind in ("onnx", "netdef") if rnd % 2 == 0 else ("netdef", "onnx"):
                model, backend = f"{base}_{kind}", backends[kind]
                feed, wanted = {names[model][0]: x}, [names[model][1]]
                calls, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    backend.execute(feed, wanted)
                    calls += 1
                rates[kind].append(calls * size / (time.perf_counter() - start))
        onnx_rate, netdef_rate = (benchlib.med(rates[k]) for k in ("onnx", "netdef"))
        table.append([base, str(size), f"{onnx_rate:.0f}", f"{netdef_rate:.0f}",
                      f"{netdef_rate / onnx_rate:.2f}"])  # fmt: skip
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-s", "--seconds", type=float, default=5)
    ap.add_argument("-w", "--warmup", type=float, default=2)
    ap.add_argument("-c", "--concurrency", default="1,8")
    ap.add_argument("-r", "--rounds", type=int, default=2)
    ap.add_argument("--models", default="resnet_tiny,resnet_blocks")
    ap.add_argument("--port", type=int, default=27700)
    ap.add_argument("--out")
    ap.add_argument(
        "--inprocess-rounds",
        type=int,
        default=20,
        help="rounds of the in-process comparison (0.25 s per batch size and side; 0: off)",
    )
    ns = ap.parse_args()
    which = ns.models.split(",")
    out = benchlib.new_outdir("caffe2", ns.out)
    repo = out / "repo"
    names = write_repo(repo, which)
    port = benchlib.free_ports(ns.port, 3)
    srv = benchlib.start_naiad(repo, port, out, sorted(names))
    rows: list[dict] = []
    try:
        for base in which:
            benchlib.log(f"{base}: max |onnx - netdef| = {check_answers(srv.url, base, names):.2e}")
        for rnd in range(ns.rounds):
            for base in which:
                shape = ",".join(map(str, MODELS[base][0]))
                for conc in map(int, ns.concurrency.split(",")):
                    kinds = ("onnx", "netdef") if rnd % 2 == 0 else ("netdef", "onnx")
                    for kind in kinds:
                        model = f"{base}_{kind}"
                        row = benchlib.run_loadgen(
                            srv, model, conc, ns.seconds, ns.warmup, True, kind, base,
                            shape=shape, check=False, input_name=names[model][0],
                            output_name=names[model][1])  # fmt: skip
                        row.update(round=rnd, kind=kind, base=base, concurrency=conc)
                        rows.append(row)
                        benchlib.log(f"round {rnd} {model} c={conc}: "
                                     f"{row.get('infer_per_s')} infer/s")  # fmt: skip
    finally:
        srv.stop()
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    agg = benchlib.aggregate(rows, ("base", "concurrency", "kind"))
    table = []
    for base in which:
        for conc in map(int, ns.concurrency.split(",")):
            onnx_a, netdef_a = agg.get((base, conc, "onnx")), agg.get((base, conc, "netdef"))
            table.append(
                [
                    base,
                    str(conc),
                    *benchlib.perf_cells(onnx_a)[:4],
                    *benchlib.perf_cells(netdef_a),
                    benchlib.ratio(netdef_a, onnx_a),
                ]
            )
    head = ["model", "conc", "onnx infer/s", "(min-max)", "p50 ms", "p99 ms", "netdef infer/s",
            "(min-max)", "p50 ms", "p99 ms", "cli cpu%", "srv cpu%", "other cpu%",
            "netdef/onnx"]  # fmt: skip
    text = (
        f"{benchlib.machine_info()}\nnaiad {benchlib.naiad_rev()}, {ns.rounds} rounds x "
        f"{ns.seconds:g} s, loadgen binary, batch 1\n\n{benchlib.md_table(head, table, 2)}\n"
    )
    head_ops = ["model", "onnx: optimised graph", "netdef: optimised graph"]
    ops_rows = [optimized_ops(repo, base) for base in which]
    ops_table = benchlib.md_table(head_ops, ops_rows, 3)
    text += f"\nOperators after onnxruntime's optimisations:\n\n{ops_table}\n"
    if ns.inprocess_rounds:
        rows_ip = [
            r for base in which for r in inprocess(repo, names, base, ns.inprocess_rounds, 0.25)
        ]
        head_ip = ["model", "batch", "onnx rows/s", "netdef rows/s", "netdef/onnx"]
        text += (
            f"\nIn-process, execute() of both backends alternately, {ns.inprocess_rounds} "
            f"rounds x 0.25 s, medians:\n\n{benchlib.md_table(head_ip, rows_ip, 2)}\n"
        )
    (out / "tables.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
