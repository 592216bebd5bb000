"""Ensembles end to end: the image pipeline of the seed, a DAG, nesting, errors and lifecycle.

One server (EXPLICIT model control, so tests can load and unload) over a repository holding
``examples/make_ensemble.py``'s models plus small ensembles of custom test steps, which come from
an inline plugin written by this module.
"""

from __future__ import annotations

import importlib.util
import io
import os
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import ROOT, start_server
from PIL import Image
from tritonclient.utils import InferenceServerException

STEPS_PLUGIN = '''
"""Custom steps for the ensemble tests."""
import threading

import numpy as np
import naiad

_BARRIERS = {}
_LOCK = threading.Lock()


def _barrier(group, parties):
    with _LOCK:
        barrier = _BARRIERS.get(group)
        if barrier is None or barrier.broken:
            barrier = _BARRIERS[group] = threading.Barrier(parties, timeout=15)
        return barrier


class Rendezvous(naiad.CustomInstance):
    """Y = X + ``add``, but only once ``parties`` executions of its ``group`` run at the same
    time (else the barrier times out and the request fails): proof of concurrency, no clocks."""

    name = "test_rendezvous"

    def initialize(self):
        self.group = self.parameters["group"]
        self.add = np.float32(self.parameters["add"])

    def execute(self, inputs, outputs):
        _barrier(self.group, 2).wait()
        return {"Y": inputs["X"] + self.add}


class Combine(naiad.CustomInstance):
    """Z = A * 10 + B; refuses negative A."""

    name = "test_combine"

    def execute(self, inputs, outputs):
        a, b = inputs["A"], inputs["B"]
        if (a < 0).any():
            raise ValueError("negative input refused")
        return {"Z": a * 10 + b}


class BatchProbe(naiad.CustomInstance):
    """Y = X; N = how many requests this execution got."""

    name = "test_batch_probe"

    def execute_requests(self, requests):
        return [
            naiad.InferResponse(r.model_name, r.model_version, r.id, {
                "Y": r.inputs["X"], "N": np.full((r.batch_size, 1), len(requests), np.int32)})
            for r in requests
        ]


@naiad.hookimpl
def naiad_register_backends(registry):
    for cls in (Rendezvous, Combine, BatchProbe):
        registry.register(cls)
'''


def _make_ensemble_module():
    spec = importlib.util.spec_from_file_location(
        "naiad_make_ensemble", ROOT / "examples" / "make_ensemble.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_ensemble = _make_ensemble_module()

V4 = "dims: [ 4 ]"


def tensor(name: str, dtype: str = "TYPE_FP32", dims: str = V4) -> str:
    return f'{{ name: "{name}" data_type: {dtype} {dims} }}'


def custom(backend: str, inputs: list[str], outputs: list[str], extra: str = "") -> str:
    return (
        f'backend: "{backend}"\nmax_batch_size: 8\n'
        f"input [ {', '.join(inputs)} ]\noutput [ {', '.join(outputs)} ]\n"
        "instance_group [{ kind: KIND_CPU count: 1 }]\n" + extra
    )


def param(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'


def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = "".join(f' input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    maps += "".join(f' output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: -1{maps} }}'


def ensemble(inputs: list[str], outputs: list[str], steps: list[str], max_batch_size=8) -> str:
    return (
        f'platform: "ensemble"\nmax_batch_size: {max_batch_size}\n'
        f"input [ {', '.join(inputs)} ]\noutput [ {', '.join(outputs)} ]\n"
        f"ensemble_scheduling {{ step [ {', '.join(steps)} ] }}\n"
    )


def write_model(repo: Path, name: str, config: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config)


def build_repository(repo: Path) -> None:
    make_ensemble.write_all(repo)
    write_model(
        repo,
        "nested_classifier",
        ensemble(
            [tensor("IMAGE", "TYPE_STRING", "dims: [ 1 ]")],
            [tensor("SCORES", dims="dims: [ 1000 ]")],
            [step(make_ensemble.ENSEMBLE, {"INPUT": "IMAGE"}, {"OUTPUT": "SCORES"})],
        ),
    )
    # a diamond: X -> branch_a, branch_b (concurrently) -> combine -> Z
    for name, add in (("branch_a", "1"), ("branch_b", "2")):
        write_model(
            repo,
            name,
            custom(
                "test_rendezvous",
                [tensor("X")],
                [tensor("Y")],
                param("group", "dag") + param("add", add),
            ),
        )
    for name in ("combine", "combine_spare", "lazy_member"):
        write_model(repo, name, custom("test_combine", [tensor("A"), tensor("B")], [tensor("Z")]))
    write_model(
        repo,
        "dag",
        ensemble(
            [tensor("X")],
            [tensor("Z")],
            [
                step(
                    "combine", {"A": "ya", "B": "yb"}, {"Z": "Z"}
                ),  # listed first: order is data-flow
                step("branch_a", {"X": "X"}, {"Y": "ya"}),
                step("branch_b", {"X": "X"}, {"Y": "yb"}),
            ],
        ),
    )
    for name, member in (("uses_spare", "combine_spare"), ("lazy_ensemble", "lazy_member")):
        write_model(
            repo,
            name,
            ensemble(
                [tensor("P"), tensor("Q")],
                [tensor("R")],
                [step(member, {"A": "P", "B": "Q"}, {"Z": "R"})],
            ),
        )
    write_model(
        repo,
        "probe",
        custom(
            "test_batch_probe",
            [tensor("X")],
            [tensor("Y"), tensor("N", "TYPE_INT32", "dims: [ 1 ]")],
            "dynamic_batching { preferred_batch_size: [ 2 ] max_queue_delay_microseconds: 20000000 }",
        ),
    )
    write_model(
        repo,
        "probe_ensemble",
        ensemble(
            [tensor("X")],
            [tensor("N", "TYPE_INT32", "dims: [ 1 ]")],
            [step("probe", {"X": "X"}, {"N": "N"})],
        ),
    )
    # ensembles that must not load
    write_model(
        repo,
        "bad_unknown",
        ensemble([tensor("X")], [tensor("Y")], [step("no_such_model", {"X": "X"}, {"Y": "Y"})]),
    )
    write_model(
        repo,
        "bad_dtype",
        ensemble(
            [tensor("P", "TYPE_INT32"), tensor("Q")],
            [tensor("R")],
            [step("combine", {"A": "P", "B": "Q"}, {"Z": "R"})],
        ),
    )
    write_model(
        repo,
        "bad_key",
        ensemble(
            [tensor("P"), tensor("Q")],
            [tensor("R")],
            [step("combine", {"NOPE": "P", "B": "Q"}, {"Z": "R"})],
        ),
    )
    write_model(
        repo,
        "bad_batch",
        ensemble(
            [tensor("P"), tensor("Q")],
            [tensor("R")],
            [step("combine", {"A": "P", "B": "Q"}, {"Z": "R"})],
            max_batch_size=16,
        ),
    )
    for name, other in (("cycle_a", "cycle_b"), ("cycle_b", "cycle_a")):
        write_model(
            repo,
            name,
            ensemble([tensor("X")], [tensor("Y")], [step(other, {"X": "X"}, {"Y": "Y"})]),
        )


STARTUP_MODELS = [
    make_ensemble.PREPROCESS,
    make_ensemble.CLASSIFIER,
    make_ensemble.ENSEMBLE,
    "nested_classifier",
    "branch_a",
    "branch_b",
    "combine",
    "combine_spare",
    "dag",
    "uses_spare",
    "probe",
    "probe_ensemble",
]


@pytest.fixture(scope="module")
def ensemble_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("ensemble_repo")
    build_repository(repo)
    return repo


@pytest.fixture(scope="module")
def ens_server(ensemble_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ensemble_server")
    (tmp / "plugins").mkdir()
    (tmp / "plugins" / "inline_ensemble_steps.py").write_text(textwrap.dedent(STEPS_PLUGIN))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(
            "PYTHONPATH",
            os.pathsep.join([str(tmp / "plugins"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        )
        srv = start_server(
            ensemble_repo,
            "--plugin",
            "inline_ensemble_steps",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in STARTUP_MODELS),
            log_dir=tmp,
        )
    yield srv
    srv.stop()


@pytest.fixture
def client(ens_server):
    c = httpclient.InferenceServerClient(ens_server.url, network_timeout=120)
    yield c
    c.close()


# ---------------------------------------------------------------------------- images


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def sample_images() -> list[bytes]:
    """Distinct pictures at sizes that need resizing (and one that does not), PNG and JPEG."""
    yy, xx = np.mgrid[0:240, 0:320]
    gradient = np.stack([xx * 255 / 320, yy * 255 / 240, (xx + yy) * 0.45], -1).astype(np.uint8)
    checker = (((xx // 20 + yy // 20) % 2) * 255).astype(np.uint8)
    blue = np.zeros((224, 224, 3), np.uint8)
    blue[..., 2] = 230
    red = np.zeros((150, 200, 3), np.uint8)
    red[..., 0] = 255
    return [
        encode(gradient, "PNG"),
        encode(np.dstack([checker] * 3), "JPEG"),
        encode(blue, "PNG"),
        encode(red, "JPEG"),
    ]


def image_input(blobs: list[bytes], name: str = "INPUT") -> list[httpclient.InferInput]:
    data = np.array(blobs, dtype=object).reshape(len(blobs), 1)
    inp = httpclient.InferInput(name, [len(blobs), 1], "BYTES")
    inp.set_data_from_numpy(data)
    return [inp]


def by_hand(repo: Path, blobs: list[bytes]) -> np.ndarray:
    """The two steps run directly: Pillow + numpy preprocessing, then onnxruntime."""
    import onnxruntime as ort

    batch = []
    for blob in blobs:
        image = Image.open(io.BytesIO(blob)).convert("RGB")
        if image.size != (224, 224):
            image = image.resize((224, 224), Image.Resampling.BILINEAR)
        x = np.asarray(image).astype(np.float32)
        batch.append((x * np.float32(1 / 128) - np.float32(1)).transpose(2, 0, 1))
    model = repo / make_ensemble.CLASSIFIER / "1" / "model.onnx"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {"data": np.stack(batch)})[0]


def floats(**arrays: np.ndarray) -> list[httpclient.InferInput]:
    inputs = []
    for name, x in arrays.items():
        inp = httpclient.InferInput(name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x.astype(np.float32))
        inputs.append(inp)
    return inputs


def model_stats(client, name: str) -> dict:
    return client.get_inference_statistics(name)["model_stats"][0]


# ---------------------------------------------------------------------------- the pipeline


def test_image_pipeline_top_k_matches_the_steps_run_by_hand(client, ensemble_repo):
    blobs = sample_images()
    expected = by_hand(ensemble_repo, blobs)
    labels = make_ensemble.labels()
    out = httpclient.InferRequestedOutput("OUTPUT", class_count=3)
    result = client.infer(make_ensemble.ENSEMBLE, image_input(blobs), outputs=[out])
    classes = result.as_numpy("OUTPUT")
    assert classes.shape == (len(blobs), 3)
    tops = set()
    for row, want in zip(classes, expected, strict=True):
        order = np.argsort(-want)[:3]
        tops.add(int(order[0]))
        for entry, index in zip(row, order, strict=True):
            value, got_index, label = entry.decode().split(":", 2)
            assert int(got_index) == index
            assert label == labels[index]  # the classifier's labels.txt, passed on
            assert float(value) == pytest.approx(float(want[index]), rel=1e-4, abs=1e-6)
    assert len(tops) > 1  # the pictures are told apart

    full = client.infer(make_ensemble.ENSEMBLE, image_input(blobs)).as_numpy("OUTPUT")
    np.testing.assert_allclose(full, expected, rtol=1e-4, atol=1e-6)


def test_statistics_count_the_ensemble_and_each_step(client):
    names = [make_ensemble.ENSEMBLE, make_ensemble.PREPROCESS, make_ensemble.CLASSIFIER]
    before = {n: model_stats(client, n) for n in names}
    client.infer(make_ensemble.ENSEMBLE, image_input(sample_images()[:2]))
    after = {n: model_stats(client, n) for n in names}
    for n in names:
        assert after[n]["inference_count"] - before[n]["inference_count"] == 2, n
        success = after[n]["inference_stats"]["success"]["count"]
        assert success - before[n]["inference_stats"]["success"]["count"] == 1, n


def test_concurrent_ensemble_requests(ens_server, ensemble_repo):
    blobs = sample_images()
    expected = by_hand(ensemble_repo, blobs)

    def call(i: int) -> np.ndarray:
        c = httpclient.InferenceServerClient(ens_server.url, network_timeout=120)
        try:
            picked = [blobs[i % 4], blobs[(i + 1) % 4]]
            out = c.infer(make_ensemble.ENSEMBLE, image_input(picked)).as_numpy("OUTPUT")
            return out, np.stack([expected[i % 4], expected[(i + 1) % 4]])
        finally:
            c.close()

    with ThreadPoolExecutor(8) as pool:
        for got, want in pool.map(call, range(16)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_nested_ensemble(client, ensemble_repo):
    blobs = sample_images()[:2]
    out = httpclient.InferRequestedOutput("SCORES", class_count=2)
    classes = client.infer("nested_classifier", image_input(blobs, "IMAGE"), outputs=[out])
    expected = by_hand(ensemble_repo, blobs)
    labels = make_ensemble.labels()
    for row, want in zip(classes.as_numpy("SCORES"), expected, strict=True):
        index = int(np.argmax(want))
        assert row[0].decode().endswith(f":{index}:{labels[index]}")  # labels through two levels


def test_metadata_and_config_of_an_ensemble(client):
    meta = client.get_model_metadata(make_ensemble.ENSEMBLE)
    assert meta["platform"] == "ensemble"
    assert meta["inputs"] == [{"name": "INPUT", "datatype": "BYTES", "shape": [-1, 1]}]
    config = client.get_model_config(make_ensemble.ENSEMBLE)
    assert config["platform"] == "ensemble" and config["max_batch_size"] == 8
    steps = config["ensemble_scheduling"]["step"]
    assert [s["model_name"] for s in steps] == [make_ensemble.PREPROCESS, make_ensemble.CLASSIFIER]
    assert steps[1]["input_map"] == {"data": "preprocessed_image"}


# ---------------------------------------------------------------------------- graphs and batching


def test_independent_branches_run_concurrently(client):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    # branch_a and branch_b each wait at one barrier for the other: this only returns if the
    # two steps ran at the same time
    z = client.infer("dag", floats(X=x)).as_numpy("Z")
    np.testing.assert_array_equal(z, (x + 1) * 10 + (x + 2))


def test_composing_model_batches_ensemble_and_direct_traffic(ens_server):
    x = np.ones((1, 4), np.float32)

    def call(model: str) -> int:
        c = httpclient.InferenceServerClient(ens_server.url, network_timeout=60)
        try:
            return int(c.infer(model, floats(X=x)).as_numpy("N")[0, 0])
        finally:
            c.close()

    # preferred batch 2 and a 20 s delay: the two requests leave together, in one execution
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(call, ["probe_ensemble", "probe"])) == [2, 2]


# ---------------------------------------------------------------------------- errors


def test_a_failing_step_names_its_model_and_the_server_keeps_serving(client):
    x = np.full((1, 4), -5, np.float32)  # branch_a gives -4 to combine
    with pytest.raises(InferenceServerException) as info:
        client.infer("dag", floats(X=x))
    message = info.value.message()
    assert info.value.status() == "500"
    assert "ensemble 'dag'" in message and "model 'combine'" in message
    assert "negative input refused" in message
    ok = client.infer("dag", floats(X=np.zeros((1, 4), np.float32))).as_numpy("Z")
    np.testing.assert_array_equal(ok, np.full((1, 4), 12, np.float32))


def test_step_request_is_validated_against_the_composing_model(client):
    # 9 > max_batch_size of the composing models: rejected by the ensemble's own validation
    with pytest.raises(InferenceServerException) as info:
        client.infer("dag", floats(X=np.zeros((9, 4), np.float32)))
    assert info.value.status() == "400" and "batch-size must be <= 8" in info.value.message()


def test_unloaded_composing_model_fails_requests_clearly(client):
    p, q = np.ones((1, 4), np.float32), np.full((1, 4), 2, np.float32)
    np.testing.assert_array_equal(
        client.infer("uses_spare", floats(P=p, Q=q)).as_numpy("R"), p * 10 + q
    )
    client.unload_model("combine_spare")
    with pytest.raises(InferenceServerException) as info:
        client.infer("uses_spare", floats(P=p, Q=q))
    assert info.value.status() == "503"
    assert "composing model 'combine_spare' is not available" in info.value.message()
    assert client.infer("combine", floats(A=p, B=q)).as_numpy("Z")[0, 0] == 12  # still serving
    client.load_model("combine_spare")
    assert client.infer("uses_spare", floats(P=p, Q=q)).as_numpy("R")[0, 0] == 12


def test_loading_an_ensemble_loads_its_composing_models(client):
    assert not client.is_model_ready("lazy_member")
    client.load_model("lazy_ensemble")
    assert client.is_model_ready("lazy_member") and client.is_model_ready("lazy_ensemble")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("bad_unknown", "uses model 'no_such_model', which is not in the model repository"),
        ("bad_dtype", "inconsistent data type: TYPE_INT32 for ensemble input 'P', TYPE_FP32"),
        ("bad_key", "is mapping to non-existing input NOPE in model combine"),
        (
            "bad_batch",
            "ensemble bad_batch allows maximum batch size 16, but it contains model "
            "combine which only allows maximum batch size to be 8",
        ),
        ("cycle_a", "circular dependency"),
    ],
)
def test_ensembles_that_cannot_work_fail_to_load(client, model, message):
    with pytest.raises(InferenceServerException) as info:
        client.load_model(model)
    assert "failed to load" in info.value.message()
    assert message in info.value.message()
    assert not client.is_model_ready(model)
    assert client.is_server_live()


def test_committed_example_repository_is_up_to_date(tmp_path):
    make_ensemble.write_all(tmp_path)
    committed = ROOT / "examples" / "ensemble_model_repository"
    for path in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        rel = path.relative_to(tmp_path)
        assert (committed / rel).read_bytes() == path.read_bytes(), f"regenerate {rel}"
