"""Model instances for one model version: built from ``instance_group``, loaded, or released.

Worker-thread side (a load thread, never the loop). Every instance gets its own thread
(:class:`~naiad.scheduling.Instance`); its ``load`` runs there, concurrently with the other
instances', and whatever did load is released again, on that same thread, when any part of the
version fails (``finalize`` runs as in Triton). The backend object itself comes from
:mod:`naiad.isolation` (in this process, or in a child process of its own).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import isolation
from .backend import InferenceBackend, InstanceContext
from .config import ModelConfig
from .errors import ModelLoadError, NaiadError
from .scheduling import Instance
from .signature import Signature

log = logging.getLogger(__name__)

__all__ = ["InstanceFactory", "instance_contexts"]


def instance_contexts(config: ModelConfig, host: Any = None) -> list[InstanceContext]:
    """One context per instance ``config.instance_group`` asks for (``count`` per GPU listed,
    or ``count`` on the CPU), named ``<group>_<n>`` as Triton names them."""
    contexts: list[InstanceContext] = []
    for group in config.instance_group:
        kind = type(group).Kind.Name(group.kind)
        devices = list(group.gpus) if kind == "KIND_GPU" else [-1]
        for device in devices:
            for _ in range(group.count):
                name = f"{group.name}_{len(contexts)}"
                contexts.append(InstanceContext(name, kind, device, host))
    return contexts


class InstanceFactory:
    """Builds and loads the instances of a model version; releases them on failure."""

    def __init__(self) -> None:
        #: what model code calls back into (BLS, model control, custom metrics); set by the
        #: server, handed to every instance through its InstanceContext
        self.host: Any = None

    def build(
        self,
        backend_cls: type[InferenceBackend],
        config: ModelConfig,
        model_path: Path,
        version: int,
        signature: Signature,
        mode: str = "thread",
        env: dict[str, str] | None = None,
    ) -> list[Instance]:
        """Every instance of ``version``, loaded. When one fails to load, the ones that did are
        released and the first error is raised (a :class:`ModelLoadError` naming the version for
        anything that is not a naiad error)."""
        version_path = model_path / str(version)
        instances = [
            Instance(
                isolation.make_backend(
                    backend_cls, mode, config, model_path, version_path, ctx, env
                ),
                signature,
            )
            for ctx in instance_contexts(config, self.host)
        ]
        # load every instance on its own thread, concurrently
        futures = [inst.executor.submit(inst.load) for inst in instances]
        errors: list[Exception] = []
        loaded: list[Instance] = []
        for inst, fut in zip(instances, futures, strict=True):
            try:
                fut.result()
                loaded.append(inst)
            except Exception as exc:
                errors.append(exc)
                if mode == "process":  # its child started: stop it (unload ends the process)
                    inst.release()
                else:
                    inst.executor.shutdown(wait=False)
        if errors:
            self.release(loaded)  # the instances that did load are released (their unload runs)
            first = errors[0]
            if isinstance(first, NaiadError):
                raise first
            raise ModelLoadError(f"version {version}: {type(first).__name__}: {first}") from first
        return instances

    @staticmethod
    def release(instances: Iterable[Instance]) -> None:
        """Unload each of ``instances`` on its own thread (errors are logged, not raised)."""
        for inst in instances:
            inst.release()
