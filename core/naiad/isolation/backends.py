"""The backend objects the schedulers see for a process-isolated instance."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import CustomInstance, InferenceBackend, InstanceContext
from ..config import ModelConfig
from ..inference import InferRequest
from .parent import InstanceProcess


class _Isolated:
    """What both wrappers share: the child process is the backend's load / unload / health."""

    process: InstanceProcess

    def load(self) -> None:
        self.process.start()

    def unload(self) -> None:
        self.process.stop()

    def not_ready_reason(self) -> str:
        return self.process.not_ready_reason()

    def readiness_check(self) -> Callable[[], None] | None:
        return self.process.check_ready if self.process.checks_readiness else None


class IsolatedBackend(_Isolated, InferenceBackend):
    """An :class:`InferenceBackend` running in a process of its own."""

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> Any:
        return self.process.execute(inputs, outputs)


class IsolatedCustomInstance(_Isolated, CustomInstance):
    """A :class:`CustomInstance` running in a process of its own. Besides the blocking
    :meth:`execute_requests` it offers :meth:`submit_requests`: the event loop hands the
    execution to the child itself (see :meth:`naiad.scheduling.Instance.submit`)."""

    def execute_requests(self, requests: Sequence[InferRequest]) -> list[Any]:
        return self.process.execute_requests(requests)

    def submit_requests(
        self,
        requests: Sequence[InferRequest],
        done: Callable[[list[Any] | None, BaseException | None], None],
    ) -> bool:
        return self.process.submit(requests, done)


def make_isolated(
    backend_cls: type[InferenceBackend],
    config: ModelConfig,
    model_path: Path,
    version_path: Path,
    ctx: InstanceContext,
    env: Mapping[str, str] | None = None,
) -> InferenceBackend:
    """``backend_cls``'s instance, run in a child process."""
    wrapper: type[InferenceBackend] = (
        IsolatedCustomInstance if issubclass(backend_cls, CustomInstance) else IsolatedBackend
    )
    backend = wrapper(config, model_path, version_path, ctx)
    backend.process = InstanceProcess(  # type: ignore[attr-defined]
        backend_cls, config, model_path, version_path, ctx, env
    )
    return backend
