"""The interface every scheduler implements."""

from __future__ import annotations

import abc

from ..inference import InferRequest, InferResponse


class Scheduler(abc.ABC):
    """Takes validated requests for one model version and returns their responses."""

    @abc.abstractmethod
    async def infer(self, request: InferRequest) -> InferResponse:
        """Run one request; raise a :class:`naiad.NaiadError` on failure."""

    @abc.abstractmethod
    async def drain(self, timeout: float) -> None:
        """Stop taking requests, wait (up to ``timeout`` s) for queued/in-flight ones to finish,
        then fail any that remain with a clear error."""

    @property
    @abc.abstractmethod
    def inflight(self) -> int:
        """Requests accepted and not yet answered."""
