"""Plugin discovery: every plugin is checked against the hook specs at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import naiad
import pytest
from naiad.plugins import PluginError, build_backend_registry


class Tripler(naiad.InferenceBackend):
    name = "tripler"
    platforms = ("tripler_platform",)

    def execute(self, inputs, outputs):
        return {"OUT": inputs["IN"] * 3}


def _module(name: str, **functions) -> types.ModuleType:
    module = types.ModuleType(name)
    for attr, fn in functions.items():
        setattr(module, attr, fn)
    return module


def test_registered_backend_records_its_source():
    @naiad.hookimpl
    def naiad_register_backends(registry):
        registry.register(Tripler)

    registry = build_backend_registry(
        [_module("tripler_plugin", naiad_register_backends=naiad_register_backends)],
        entry_points_enabled=False,
    )
    assert registry.find("", "tripler") is Tripler
    assert registry.find("tripler_platform", "") is Tripler
    sources = {name: source for name, _, source in registry.entries()}
    assert sources == {"python": "builtin", "tripler": "in-process"}


def test_a_later_plugin_replaces_an_earlier_backend_of_the_same_name():
    class Other(Tripler):
        pass

    @naiad.hookimpl
    def first(registry):
        registry.register(Tripler)

    @naiad.hookimpl
    def second(registry):
        registry.register(Other)

    plugins = [
        _module("first", naiad_register_backends=first),
        _module("second", naiad_register_backends=second),
    ]
    assert build_backend_registry(plugins, entry_points_enabled=False).find("", "tripler") is Other


def test_misspelled_hook_is_an_error_naming_the_plugin():
    @naiad.hookimpl
    def naiad_register_backend(registry):  # the spec is naiad_register_backends
        registry.register(Tripler)

    module = _module("typo_plugin", naiad_register_backend=naiad_register_backend)
    with pytest.raises(PluginError, match=r"'typo_plugin'.*\['naiad_register_backend'\].*no hook"):
        build_backend_registry([module], entry_points_enabled=False)


def test_hook_with_arguments_the_spec_lacks_is_an_error():
    @naiad.hookimpl
    def naiad_register_backends(registry, settings):
        registry.register(Tripler)

    module = _module("args_plugin", naiad_register_backends=naiad_register_backends)
    with pytest.raises(PluginError, match=r"'args_plugin'.*settings"):
        build_backend_registry([module], entry_points_enabled=False)


TYPO_PLUGIN = """
import naiad

@naiad.hookimpl
def naiad_register_backend(registry):
    pass
"""


@pytest.mark.parametrize("command", ["plugins", "serve"])
def test_cli_refuses_a_misspelled_plugin(tmp_path, command):
    (tmp_path / "typo_cli_plugin.py").write_text(TYPO_PLUGIN)
    repo = tmp_path / "repo"
    repo.mkdir()
    args = [sys.executable, "-m", "naiad", command, "--plugin", "typo_cli_plugin"]
    if command == "serve":
        args += ["--model-repository", str(repo), "--http-port", "0", "--metrics-port", "0"]
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "typo_cli_plugin" in done.stderr
    assert "naiad_register_backend" in done.stderr
    assert "Traceback" not in done.stderr
