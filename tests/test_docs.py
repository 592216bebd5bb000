"""The plugin author's guide stays true: every hook documented, and its example code runs."""

from __future__ import annotations

import inspect
import sys
import types
from pathlib import Path

import naiad
import numpy as np
import pytest
from naiad import hookspecs
from naiad.backend import CustomInstance, InstanceContext
from naiad.config import parse_model_config
from naiad.plugins import build_backend_registry

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "writing-a-backend.md"


def guide() -> str:
    return GUIDE.read_text()


def code_blocks() -> list[str]:
    """The guide's fenced code blocks, in order."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in guide().splitlines():
        if current is None and line.startswith("```"):
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def code_block(first_line: str) -> str:
    """The fenced block of the guide whose first line starts with ``first_line``."""
    for block in code_blocks():
        if block.startswith(first_line):
            return block
    raise AssertionError(f"no code block starting with {first_line!r} in {GUIDE.name}")


def hook_names() -> list[str]:
    return [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "naiad_spec")
    ]


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_documented(hook):
    signature = inspect.signature(getattr(hookspecs, hook))
    params = ", ".join(signature.parameters)
    assert f"### `{hook}({params})`" in guide(), f"document hook {hook} in {GUIDE.name}"


def test_there_are_hooks():
    assert "naiad_register_backends" in hook_names()


@pytest.fixture
def example_module(monkeypatch):
    module = types.ModuleType("naiad_example_backends")
    exec(
        compile(code_block("# naiad_example_backends/__init__.py"), "guide-example", "exec"),
        module.__dict__,
    )
    monkeypatch.setitem(sys.modules, "naiad_example_backends", module)
    return module


def test_example_plugin_registers_and_runs(example_module, tmp_path):
    registry = build_backend_registry([example_module], entry_points_enabled=False)
    assert registry.find("", "doubler") is example_module.Doubler
    assert registry.find("", "greeter") is example_module.Greeter

    config = parse_model_config(
        "\n".join(_config_lines("models/double/config.pbtxt")), model_name="double"
    )
    example_module.Doubler.auto_complete_config(config, tmp_path)
    assert [o.name for o in config.output] == ["OUTPUT"]
    doubler = example_module.Doubler(
        config, tmp_path, tmp_path / "1", InstanceContext("d", "KIND_CPU")
    )
    doubler.load()
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(doubler.execute({"INPUT": x}, ["OUTPUT"])["OUTPUT"], x * 3)

    config = parse_model_config(
        "\n".join(_config_lines("models/greet/config.pbtxt")), model_name="greet"
    )
    greeter = example_module.Greeter(
        config, tmp_path, tmp_path / "1", InstanceContext("g", "KIND_CPU")
    )
    greeter.load()
    request = naiad.InferRequest("greet", inputs={"NAME": np.array([[b"Ada"]], dtype=object)})
    (response,) = greeter.execute_requests([request])
    assert response.outputs["GREETING"][0, 0] == b"Ahoy, Ada!"


def _config_lines(path: str) -> list[str]:
    return code_block(f"# {path}").splitlines()[1:]


def test_the_guides_test_passes(example_module, tmp_path):
    namespace: dict = {}
    exec(compile(code_block("# tests/test_backends.py"), "guide-test", "exec"), namespace)
    namespace["test_greeter"](tmp_path)


def test_pyproject_declares_the_entry_point():
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads(code_block("# pyproject.toml"))
    assert pyproject["project"]["entry-points"]["naiad.backends"] == {
        "example": "naiad_example_backends"
    }


def test_model_py_example_defines_one_custom_instance():
    namespace: dict = {"__name__": "guide_model_py"}
    exec(compile(code_block("# models/scale/1/model.py"), "guide-model-py", "exec"), namespace)
    classes = [
        v
        for v in namespace.values()
        if isinstance(v, type) and issubclass(v, CustomInstance) and v is not CustomInstance
    ]
    assert [c.__name__ for c in classes] == ["Scale"]
