"""``pb_utils.load_model`` / ``unload_model`` / ``is_model_ready`` / ``get_model_dir``:
the server's repository API from model code, through the current host."""

from __future__ import annotations

from typing import Any

from ..errors import NaiadError
from . import host as _host
from .objects import TritonModelException


def load_model(model_name: str, config: str = "", files: dict[str, bytes] | None = None) -> None:
    try:
        _host.current().load_model(model_name, config, files)
    except NaiadError as exc:
        raise TritonModelException(f"Failed to load model: {exc.message}") from exc


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    try:
        _host.current().unload_model(model_name, unload_dependents)
    except NaiadError as exc:
        raise TritonModelException(f"Failed to unload model: {exc.message}") from exc


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    try:
        return bool(_host.current().is_model_ready(model_name, str(model_version)))
    except NaiadError as exc:
        raise TritonModelException(f"Failed to check model readiness: {exc.message}") from exc


def get_model_dir() -> str:
    runner: Any = _host.calling_runner.get(None)
    if runner is None:
        raise TritonModelException("get_model_dir() is only available inside a model")
    return str(runner.version_path)
