"""gRPC throughput and latency: naiad beside Triton and beside bare grpcio echo servers.

perf_analyzer ``-i grpc`` (sync, batch 1) at concurrency 1 and 8 on the anchors' ``simple``,
``identity_fp32`` and ``mlp`` (1×16), against, one after the other:

- ``naiad``: naiad serving the anchors' ONNX repository over gRPC with its lean HTTP/2 front
  (the default), ``naiad-http``: the same server over HTTP, for the latency comparison, and
  ``naiad-grpcio``: naiad on grpcio's server (``--grpc-fast-path=false``);
- ``echo-aio`` / ``echo-sync``: a bare grpcio server (``grpc.aio``; the threaded sync server with 4
  workers) answering ModelInfer by echoing the input bytes (no model, no naiad: only the
  generated messages), so the table shows what the gRPC library itself costs;
- ``triton-onnx`` / ``triton-python``: NVIDIA's tritonserver 2.51 with its C++ onnxruntime
  backend and with its python backend (``bash bench/setup.sh``; skipped when missing).

    python3 bench/grpc_bench.py [--interval-ms 3000] [--passes 1] [--targets naiad,echo-aio,...]
        [--image]  (adds a 3x224x224 FP32 identity model to the ONNX repositories)

Prints a markdown table (infer/s, p50, p99, CPU, the server's CPU time per inference over the
run) and writes rows.jsonl under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import benchlib as B

MODELS = ["simple", "identity_fp32", "mlp"]
TARGETS = ["naiad", "naiad-http", "naiad-grpcio", "echo-aio", "echo-sync", "triton-onnx"]
TARGETS += ["triton-python"]

_ECHO = r"""
import asyncio, sys
from concurrent import futures
from pathlib import Path

import grpc
from google.protobuf import text_format
from naiad.config.model_config_pb2 import DataType, ModelConfig
from naiad.grpc import grpc_service_pb2 as pb

KIND, PORT, REPO = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
CONFIGS = {}
for path in REPO.glob("*/config.pbtxt"):
    config = text_format.Parse(path.read_text(), ModelConfig())
    CONFIGS[config.name] = config

def dtype(t):
    name = DataType.Name(t.data_type)[5:]
    return "BYTES" if name == "STRING" else name

def tensors(config, items):
    batch = [-1] if config.max_batch_size else []
    return [pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=dtype(t),
            shape=batch + list(t.dims)) for t in items]

def metadata(request, context):
    c = CONFIGS[request.name]
    return pb.ModelMetadataResponse(name=c.name, versions=["1"], platform=c.platform,
        inputs=tensors(c, c.input), outputs=tensors(c, c.output))

def config(request, context):
    return pb.ModelConfigResponse(config=CONFIGS[request.name])

def infer(request, context):
    outputs = CONFIGS[request.model_name].output
    Tensor = pb.ModelInferResponse.InferOutputTensor
    return pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id,
        outputs=[Tensor(name=o.name, datatype=t.datatype, shape=t.shape)
                 for o, t in zip(outputs, request.inputs)],
        raw_output_contents=request.raw_input_contents[: len(outputs)])

def stats(request, context):
    return pb.ModelStatisticsResponse(model_stats=[pb.ModelStatistics(name=request.name,
        version="1")])

HANDLERS = {
    "ServerLive": (lambda r, c: pb.ServerLiveResponse(live=True), pb.ServerLiveRequest),
    "ServerReady": (lambda r, c: pb.ServerReadyResponse(ready=True), pb.ServerReadyRequest),
    "ModelReady": (lambda r, c: pb.ModelReadyResponse(ready=True), pb.ModelReadyRequest),
    "ServerMetadata": (lambda r, c: pb.ServerMetadataResponse(name="echo"),
                       pb.ServerMetadataRequest),
    "ModelMetadata": (metadata, pb.ModelMetadataRequest),
    "ModelConfig": (config, pb.ModelConfigRequest),
    "ModelStatistics": (stats, pb.ModelStatisticsRequest),
    "ModelInfer": (infer, pb.ModelInferRequest),
}
OPTIONS = [("grpc.max_send_message_length", 2**31 - 1),
           ("grpc.max_receive_message_length", 2**31 - 1), ("grpc.so_reuseport", 0)]

def handler(fn, request_type, aio):
    if aio:
        async def call(request, context):
            return fn(request, context)
    else:
        call = fn
    return grpc.unary_unary_rpc_method_handler(call, request_deserializer=request_type.FromString,
        response_serializer=lambda m: m.SerializeToString())

def generic(aio):
    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService",
        {name: handler(fn, req, aio) for name, (fn, req) in HANDLERS.items()})

if KIND == "aio":
    async def main():
        server = grpc.aio.server(options=OPTIONS)
        server.add_generic_rpc_handlers((generic(True),))
        server.add_insecure_port(f"127.0.0.1:{PORT}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()
    import uvloop
    uvloop.run(main())
else:
    server = grpc.server(futures.ThreadPoolExecutor(4), options=OPTIONS)
    server.add_generic_rpc_handlers((generic(False),))
    server.add_insecure_port(f"127.0.0.1:{PORT}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
"""


def start_echo(kind: str, port: int, repo: Path, workdir: Path) -> B.Server:
    logp = workdir / f"echo-{kind}.log"
    f = open(logp, "wb")
    cmd = [str(B.NAIAD_VENV / "bin" / "python"), "-c", _ECHO, kind, str(port), str(repo)]
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    srv = B.Server(f"echo-{kind}", p.pid, f"http://127.0.0.1:{port}", logp, p, "echo")
    end = time.monotonic() + 60
    while b"ready" not in logp.read_bytes():
        if p.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"echo-{kind} did not start: {logp.read_text()[-2000:]}")
        time.sleep(0.1)
    return srv


def make_repo(kind: str, out: Path, image: bool = False) -> Path:
    python = B.NAIAD_VENV / "bin" / "python"
    script = B.ANCHORS / "models" / "make_repo.py"
    subprocess.run([str(python), str(script), str(out), "--kind", kind], check=True)
    if image and kind == "onnx":
        builder = B.ROOT / "examples" / "make_models.py"
        subprocess.run([str(python), "-c", _IMAGE_MODEL, str(builder), str(out)], check=True)
    return out


#: ``--image``: an ONNX Identity over one 3x224x224 FP32 image (602 KB a request), the same
#: model file and config in naiad's and Triton's repositories (examples/make_models.py builds it)
IMAGE = "identity_image"
_IMAGE_MODEL = r"""
import importlib.util, sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("make_models", sys.argv[1])
make_models = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_models)
make_models.write_identity_image(Path(sys.argv[2]))
"""


def measure(srv, hostport, protocol, args, outdir, rows, tag) -> None:
    for model in MODELS:
        for conc in (1, 8):
            counts, ticks = B.model_counts(srv, model), B.tree_ticks(srv.pid)
            row = B.run_pa(
                srv,
                model,
                conc,
                args.interval_ms,
                outdir,
                f"{tag}-{srv.name}",
                protocol=protocol,
                hostport=hostport,
            )
            ticks, after = B.tree_ticks(srv.pid) - ticks, B.model_counts(srv, model)
            if counts and after and after[0] > counts[0]:
                # the server's CPU time (its children's too) per inference over the whole run
                row["cpu_us_per_infer"] = 1e6 * ticks / B.CLK / (after[0] - counts[0])
            row["target"] = srv.name if protocol == "grpc" else f"{srv.name}-http"
            row["pass"] = tag
            B.log_row(row)
            rows.append(row)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interval-ms", type=int, default=3000)
    ap.add_argument("--passes", type=int, default=1)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--image",
        action="store_true",
        help=f"also measure {IMAGE} (one 3x224x224 FP32 tensor a request)",
    )
    args = ap.parse_args()
    if args.image:
        MODELS.append(IMAGE)
    B.need(B.PA, "perf_analyzer")
    wanted = args.targets.split(",")
    outdir = B.new_outdir("grpc", args.out)
    work = B.tempdir("naiad-grpc-bench-")
    onnx_repo = make_repo("onnx", work / "onnx", args.image)
    rows: list[dict] = [{"tool": "note", "text": B.machine_info()}]
    start = time.monotonic()
    with B.Servers() as fleet:
        for p in range(args.passes):
            tag = f"p{p + 1}"
            for target in wanted:
                port = B.free_ports(18000, 3)
                hostport = f"127.0.0.1:{port + 1}"
                if target in ("naiad", "naiad-http"):
                    if target == "naiad-http" and "naiad" in wanted:
                        continue  # measured with the naiad server below
                    srv = fleet.add(B.start_naiad(onnx_repo, port, work, MODELS))
                    if "naiad" in wanted:
                        measure(srv, hostport, "grpc", args, outdir, rows, tag)
                    if "naiad-http" in wanted:
                        measure(srv, None, "http", args, outdir, rows, tag)
                elif target == "naiad-grpcio":  # the same server on grpcio's gRPC server
                    extra = ["--grpc-fast-path=false"]
                    srv = fleet.add(B.start_naiad(onnx_repo, port, work, MODELS, target, extra))
                    measure(srv, hostport, "grpc", args, outdir, rows, tag)
                elif target.startswith("echo-"):
                    srv = fleet.add(start_echo(target[5:], port + 1, onnx_repo, work))
                    measure(srv, hostport, "grpc", args, outdir, rows, tag)
                elif target.startswith("triton-"):
                    if not (B.TRITON_VENV / "bin" / "tritonserver").exists():
                        B.log(f"{target}: no tritonserver (bash bench/setup.sh); skipped")
                        continue
                    kind = target[7:]
                    repo = make_repo(kind, work / kind, args.image)
                    srv = fleet.add(B.start_triton(repo, port, work, MODELS, name=target))
                    measure(srv, hostport, "grpc", args, outdir, rows, tag)
                else:
                    sys.exit(f"unknown target {target}")
                srv.stop()
    rows.append({"tool": "done", "elapsed": time.monotonic() - start})
    with open(outdir / "rows.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(table(rows))
    B.log(f"rows: {outdir / 'rows.jsonl'}")
    return 0


def table(rows: list[dict]) -> str:
    runs = [r for r in rows if r.get("tool") == "perf_analyzer"]
    agg = B.aggregate(runs, ("target", "model", "concurrency"))
    best_echo = {}
    for (target, model, conc), a in agg.items():
        if target.startswith("echo-") and not a.get("failed"):
            key = (model, conc)
            if key not in best_echo or a["infer_per_s"] > best_echo[key]["infer_per_s"]:
                best_echo[key] = a
    cpu: dict[tuple, list[float]] = {}
    for r in runs:
        if r.get("cpu_us_per_infer"):
            cpu.setdefault((r["target"], r["model"], r["concurrency"]), []).append(
                r["cpu_us_per_infer"]
            )
    out = []
    for (target, model, conc), a in sorted(agg.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        echo = best_echo.get((model, conc))
        triton = agg.get(("triton-onnx", model, conc))
        us = cpu.get((target, model, conc))
        out.append(
            [target, model, str(conc), *B.perf_cells(a), B.fmt(B.med(us)) if us else "-"]
            + [B.ratio(a, echo), B.ratio(a, triton)]
        )
    head = ["target", "model", "c", "infer/s", "range", "p50 ms", "p99 ms"]
    head += ["client cpu%", "server cpu%", "other cpu%", "server µs cpu/infer"]
    head += ["÷ best echo", "÷ triton-onnx"]
    return B.md_table(head, out)


if __name__ == "__main__":
    sys.exit(main())
