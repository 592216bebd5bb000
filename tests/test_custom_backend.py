"""Custom backends: a third-party CustomInstance from an inline plugin, and model.py files.

The plugin source is written by the test into its own folder, put on the server's PYTHONPATH and
loaded with ``--plugin``, exactly as a stranger's plugin module would be.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import start_server
from tritonclient.utils import InferenceServerException

GREETER_PLUGIN = '''
"""An inline third-party plugin: backend ``test_greeter``."""
import numpy as np
import naiad


class Greeter(naiad.CustomInstance):
    """OUTPUT = parameter ``greeting`` + " " + each INPUT string; GROUP = requests in the call."""

    name = "test_greeter"

    def initialize(self):
        self.greeting = self.parameters.get("greeting", "hello").encode()
        if self.greeting == b"refuse":
            raise naiad.ModelLoadError(f"model '{self.config.name}': greeting 'refuse' refused")

    def execute_requests(self, requests):
        responses = []
        for r in requests:
            words = r.inputs["INPUT"]
            if any(w == b"boom" for w in words.reshape(-1)):
                responses.append(RuntimeError("asked to explode"))
                continue
            said = [self.greeting + b" " + w for w in words.reshape(-1)]
            responses.append(naiad.InferResponse(r.model_name, r.model_version, r.id, {
                "OUTPUT": np.array(said, dtype=object).reshape(words.shape),
                # int64 and a name the config does not list: naiad converts and drops
                "GROUP": np.full((words.shape[0], 1), len(requests), dtype=np.int64),
                "EXTRA": np.zeros(1),
            }))
        return responses


@naiad.hookimpl
def naiad_register_backends(registry):
    registry.register(Greeter)
'''

GREETER_IO = """
input [ { name: "INPUT" data_type: TYPE_STRING dims: [ 1 ] } ]
output [
  { name: "OUTPUT" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "GROUP" data_type: TYPE_INT32 dims: [ 1 ] }
]
"""

MODEL_PY = '''
"""A custom backend in the version folder."""
import numpy as np
import naiad

CALLS = []  # module state: one module per instance


class Scale(naiad.CustomInstance):
    def initialize(self):
        self.factor = float(self.parameters.get("factor", "1"))

    def execute(self, inputs, outputs):
        CALLS.append(1)
        x = inputs["X"]
        return {"Y": x * self.factor, "CALLS": np.full(x.shape[:1] + (1,), len(CALLS))}
'''

AUTO_MODEL_PY = """
import naiad
from naiad.config import ModelInput, ModelOutput, DataType


class Echo(naiad.CustomInstance):
    @classmethod
    def auto_complete_config(cls, config, version_path):
        if not config.input:
            config.input.append(ModelInput(name="IN", data_type=DataType.TYPE_FP32, dims=[-1]))
        if not config.output:
            config.output.append(ModelOutput(name="OUT", data_type=DataType.TYPE_FP32, dims=[-1]))

    def execute(self, inputs, outputs):
        return {"OUT": inputs["IN"] + 1}
"""

BROKEN_OUTPUTS_PY = """
import numpy as np
import naiad


class Broken(naiad.CustomInstance):
    def execute(self, inputs, outputs):
        x = inputs["X"]
        if x[0, 0] == 0:
            return {}  # forgets Y
        if x[0, 0] == 1:
            return {"Y": np.zeros((x.shape[0], 5), np.float32), "CALLS": np.zeros((x.shape[0], 1))}
        return {"Y": x, "CALLS": np.zeros((x.shape[0], 1))}
"""

TWO_CLASSES_PY = """
import naiad


class First(naiad.CustomInstance):
    def execute(self, inputs, outputs):
        return {"Y": inputs["X"] * 1, "CALLS": inputs["X"][:, :1] * 0}


class Second(naiad.CustomInstance):
    def execute(self, inputs, outputs):
        return {"Y": inputs["X"] * 2, "CALLS": inputs["X"][:, :1] * 0}
"""

SCALE_IO = """
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "CALLS" data_type: TYPE_INT32 dims: [ 1 ] }
]
"""


def inline_plugin(tmp_path: Path, monkeypatch, name: str, source: str) -> str:
    """Write a plugin module where the server (a subprocess) can import it; return its name."""
    folder = tmp_path / "inline_plugins"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    paths = [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    return name


def model(repo: Path, name: str, config: str, files: dict[str, str] | None = None) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config)
    for rel, text in (files or {}).items():
        (repo / name / rel).write_text(text)


def words(*items: bytes) -> list[httpclient.InferInput]:
    data = np.array(items, dtype=object).reshape(len(items), 1)
    inp = httpclient.InferInput("INPUT", list(data.shape), "BYTES")
    inp.set_data_from_numpy(data)
    return [inp]


def floats(x: np.ndarray, name: str = "X") -> list[httpclient.InferInput]:
    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [inp]


@pytest.fixture(scope="module")
def greeter_server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("greeter")
    repo = tmp_path / "repo"
    greeting = 'parameters { key: "greeting" value: { string_value: "%s" } }'
    model(
        repo, "greet", f'backend: "test_greeter"\nmax_batch_size: 8\n{GREETER_IO}' + greeting % "hi"
    )
    model(
        repo,
        "greet_batched",
        'backend: "test_greeter"\nmax_batch_size: 8\n'
        + GREETER_IO
        + "instance_group [{ kind: KIND_CPU count: 1 }]\n"
        + "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 20000000 }",
    )
    model(
        repo,
        "greet_refused",
        f'backend: "test_greeter"\nmax_batch_size: 8\n{GREETER_IO}' + greeting % "refuse",
    )
    with pytest.MonkeyPatch.context() as mp:
        plugin = inline_plugin(tmp_path, mp, "inline_greeter", GREETER_PLUGIN)
        srv = start_server(repo, "--plugin", plugin, "--exit-on-error=false", log_dir=tmp_path)
    client = httpclient.InferenceServerClient(srv.url)
    yield srv, client
    client.close()
    srv.stop()


def test_third_party_custom_instance_from_an_inline_plugin(greeter_server):
    srv, client = greeter_server
    result = client.infer("greet", words(b"world", b"naiad"))
    assert result.as_numpy("OUTPUT").reshape(-1).tolist() == [b"hi world", b"hi naiad"]
    group = result.as_numpy("GROUP")
    assert group.dtype == np.int32 and group.shape == (2, 1)  # converted to the config's type
    assert {o["name"] for o in result.get_response()["outputs"]} == {"OUTPUT", "GROUP"}
    meta = client.get_model_metadata("greet")
    assert meta["platform"] == "test_greeter"


def test_dynamic_batching_hands_a_group_of_requests(greeter_server):
    srv, _ = greeter_server

    def call(i):
        c = httpclient.InferenceServerClient(srv.url, network_timeout=60)
        try:
            return c.infer("greet_batched", words(str(i).encode())).as_numpy("GROUP")[0, 0]
        finally:
            c.close()

    with ThreadPoolExecutor(4) as pool:
        groups = list(pool.map(call, range(4)))
    assert groups == [4, 4, 4, 4]  # one execute_requests call with the four requests


def test_a_failing_request_names_the_model_and_spares_the_others(greeter_server):
    _, client = greeter_server
    with pytest.raises(InferenceServerException) as info:
        client.infer("greet", words(b"boom"))
    assert info.value.status() == "500"
    assert "RuntimeError in model 'greet'" in info.value.message()
    assert "asked to explode" in info.value.message()
    assert client.infer("greet", words(b"again")).as_numpy("OUTPUT")[0, 0] == b"hi again"


def test_initialize_failure_makes_the_model_unavailable(greeter_server):
    _, client = greeter_server
    index = {e["name"]: e for e in client.get_model_repository_index()}
    assert index["greet_refused"]["state"] == "UNAVAILABLE"
    assert "greeting 'refuse' refused" in index["greet_refused"]["reason"]
    assert client.is_model_ready("greet")


def test_naiad_plugins_lists_the_inline_plugin(tmp_path, monkeypatch):
    plugin = inline_plugin(tmp_path, monkeypatch, "inline_greeter_cli", GREETER_PLUGIN)
    out = subprocess.run(
        [sys.executable, "-m", "naiad", "plugins", "--plugin", plugin],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ),
    ).stdout
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert f"--plugin {plugin}" in lines["test_greeter"]
    assert "builtin" in lines["python"]  # the model.py loader is a plugin too


@pytest.fixture(scope="module")
def model_py_server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("model_py")
    repo = tmp_path / "repo"
    factor = 'parameters { key: "factor" value: { string_value: "%s" } }\n'
    two = "instance_group [{ kind: KIND_CPU count: 2 }]\n"
    model(
        repo,
        "scale",
        'backend: "python"\n' + SCALE_IO + factor % "3" + two,
        {"1/model.py": MODEL_PY},
    )
    model(
        repo,
        "scale_custom",
        'platform: "custom"\n' + SCALE_IO + factor % "-1",
        {"1/model.py": MODEL_PY},
    )
    model(
        repo, "echo_auto", 'backend: "python"\nmax_batch_size: 4\n', {"1/model.py": AUTO_MODEL_PY}
    )
    model(
        repo, "broken_outputs", 'backend: "python"\n' + SCALE_IO, {"1/model.py": BROKEN_OUTPUTS_PY}
    )
    model(repo, "two_classes", 'backend: "python"\n' + SCALE_IO, {"1/model.py": TWO_CLASSES_PY})
    model(
        repo,
        "second_class",
        'backend: "python"\n'
        + SCALE_IO
        + 'parameters { key: "custom_class" value: { string_value: "Second" } }',
        {"1/model.py": TWO_CLASSES_PY},
    )
    model(
        repo,
        "legacy_so",
        'platform: "custom"\ndefault_model_filename: "libimagepreprocess.so"\n' + SCALE_IO,
    )
    model(repo, "syntax_error", 'backend: "python"\n' + SCALE_IO, {"1/model.py": "def broken(:\n"})
    srv = start_server(repo, "--exit-on-error=false", log_dir=tmp_path)
    client = httpclient.InferenceServerClient(srv.url)
    yield srv, client
    client.close()
    srv.stop()


def test_model_py_in_the_version_folder(model_py_server):
    _, client = model_py_server
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(client.infer("scale", floats(x)).as_numpy("Y"), x * 3)
    np.testing.assert_array_equal(client.infer("scale_custom", floats(x)).as_numpy("Y"), -x)
    # each instance executed model.py afresh: the two instances count their own calls
    counts = [int(client.infer("scale", floats(x)).as_numpy("CALLS")[0, 0]) for _ in range(6)]
    assert max(counts) < 7


def test_model_py_completes_its_config(model_py_server):
    _, client = model_py_server
    meta = client.get_model_metadata("echo_auto")
    assert meta["inputs"] == [{"name": "IN", "datatype": "FP32", "shape": [-1, -1]}]
    x = np.ones((1, 3), np.float32)
    out = client.infer("echo_auto", floats(x, "IN")).as_numpy("OUT")
    np.testing.assert_array_equal(out, x + 1)


def test_custom_outputs_are_checked(model_py_server):
    _, client = model_py_server
    for first, message in ((0, "did not produce output 'Y'"), (1, "with shape [1, 5]")):
        x = np.full((1, 4), first, np.float32)
        with pytest.raises(InferenceServerException) as info:
            client.infer("broken_outputs", floats(x))
        assert "model 'broken_outputs'" in info.value.message()
        assert message in info.value.message()
    x = np.full((1, 4), 7, np.float32)
    np.testing.assert_array_equal(client.infer("broken_outputs", floats(x)).as_numpy("Y"), x)


def test_model_py_load_errors_are_clear(model_py_server):
    _, client = model_py_server
    index = {e["name"]: e for e in client.get_model_repository_index()}
    assert (
        "exactly one naiad.CustomInstance subclass (found: First, Second)"
        in (index["two_classes"]["reason"])
    )
    assert "does not load TRTIS C custom backends" in index["legacy_so"]["reason"]
    assert "SyntaxError" in index["syntax_error"]["reason"]
    x = np.ones((1, 4), np.float32)
    np.testing.assert_array_equal(client.infer("second_class", floats(x)).as_numpy("Y"), x * 2)
