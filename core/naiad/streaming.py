"""Several responses for one request: the channel a decoupled model answers through.

A model whose config says ``model_transaction_policy { decoupled: true }`` does not return one
response per request. :meth:`naiad.dataplane.DataPlane.infer_stream` attaches a
:class:`ResponseStream` to the request (``request.stream``) before scheduling it; the backend
then sends 0..N responses through it, from any thread and even after its execute returned, and
ends with one ``final`` send. In the request's place the backend's ``execute_requests`` returns
``None`` (answered through the stream).

Sends are checked on the sender's thread (outputs converted to the config's types and pruned to
the requested ones, as every custom backend's are) and handed to the event loop in order; the
consumer (a transport) reads them with :meth:`ResponseStream.get`. When the consumer stops
early, :meth:`ResponseStream.cancel` marks the request cancelled (``is_cancelled``); later
sends are dropped.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import InternalError, NaiadError

if TYPE_CHECKING:
    from .inference import InferRequest, InferResponse
    from .signature import Signature

#: one item of a stream: (response or None, final, error or None)
StreamItem = tuple["InferResponse | None", bool, "NaiadError | None"]


class StreamClosed(InternalError):
    """A send after the final one."""


class ResponseStream:
    """The responses of one request to a decoupled model. ``send`` is thread-safe."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        signature: Signature | None = None,
        request: InferRequest | None = None,
    ) -> None:
        self._loop = loop
        self._signature = signature
        self._request = request
        self._queue: asyncio.Queue[StreamItem] = asyncio.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._cancelled = threading.Event()
        self._on_cancel: list[Callable[[], None]] = []

    @property
    def closed(self) -> bool:
        """The final response was sent."""
        return self._closed

    @property
    def cancelled(self) -> bool:
        """The consumer went away (the client cancelled or disconnected)."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()
        callbacks, self._on_cancel = self._on_cancel, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a callback must not stop the others
                pass

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (once, on the canceller's thread) when the request is cancelled."""
        if self.cancelled:
            callback()
        else:
            self._on_cancel.append(callback)

    def send(
        self,
        response: InferResponse | None = None,
        *,
        final: bool = False,
        error: NaiadError | None = None,
    ) -> None:
        """Send one response (or an error, or nothing but the final flag). Any thread.

        Raises :class:`StreamClosed` after the final send. A response whose outputs do not fit
        the config is sent as that error instead.
        """
        if response is not None and error is None and self._signature is not None:
            from .scheduling.custom_outputs import check_custom_outputs

            assert self._request is not None
            try:
                response.outputs = check_custom_outputs(
                    self._signature, self._request, response.outputs
                )
            except NaiadError as exc:
                response, error = None, exc
        if response is not None:
            response.final = final
        with self._lock:
            if self._closed:
                raise StreamClosed("Response sender has been closed.")
            if final:
                self._closed = True
            if self.cancelled:
                return
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, (response, final, error))
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

    def fail(self, error: NaiadError) -> None:
        """End the stream with ``error`` unless it already ended (e.g. the execution raised)."""
        try:
            self.send(None, final=True, error=error)
        except StreamClosed:
            pass

    async def get(self) -> StreamItem:
        """The next item, on the loop."""
        return await self._queue.get()
