"""``ModelStreamInfer``: Triton's bidirectional inference stream.

Requests are read one at a time and each is issued as soon as it is read, while fewer than
:data:`MAX_IN_FLIGHT` of the stream's requests are unanswered or their replies unwritten: past
that the stream stops reading, so a client sending faster than the model is held back by
flow control (the lean front refills a stream's window as its requests are read).

A model that is not decoupled answers each request with one response, written in request
order; a decoupled model's 0..N responses are written as they come. Every response carries the
``triton_final_response`` parameter. Errors go back in-band (``error_message``) and the stream
stays open, unless the stream was opened with the ``triton_grpc_error: true`` header: then the
first error from an issued request ends the stream with its gRPC status and cancels the rest.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..errors import InternalError, NaiadError
from ..forwarding import forward_headers
from ..inference import InferRequest, InferResponse, parse_model_version
from . import codec
from . import grpc_service_pb2 as pb
from .options import check_restricted

log = logging.getLogger(__name__)

FINAL = "triton_final_response"
SHUTTING_DOWN = "GRPC server is shutting down and has stopped accepting new requests."

_END = object()
#: a stream's requests issued and not yet answered, plus replies not yet written, beyond which
#: it reads no more requests until one is done
MAX_IN_FLIGHT = 128


def error_reply(message: str, msg: pb.ModelInferRequest, issued: bool) -> Any:
    """An in-band error. Once issued, it names the model and is the request's final reply."""
    response = pb.ModelInferResponse(id=msg.id)
    if issued:
        response.model_name = msg.model_name
        response.model_version = msg.model_version
        response.parameters[FINAL].bool_param = True
    return pb.ModelStreamInferResponse(error_message=message, infer_response=response)


def empty_final_reply(msg: pb.ModelInferRequest) -> Any:
    response = pb.ModelInferResponse(
        model_name=msg.model_name, model_version=msg.model_version, id=msg.id
    )
    response.parameters[FINAL].bool_param = True
    return pb.ModelStreamInferResponse(infer_response=response)


class _Stream:
    """One open stream: its reader, the requests in flight and the queue of replies."""

    def __init__(self, service: Any, context: Any, grpc_error: bool) -> None:
        self.dp = service.dp
        self.options = service.options
        self.context = context
        self.grpc_error = grpc_error
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.tasks: set[asyncio.Task] = set()
        #: done when the last ordered (not decoupled) request has queued its reply
        self.tail: asyncio.Future | None = None
        #: the error that ends the stream (``triton_grpc_error`` mode)
        self.failure: NaiadError | None = None
        #: set when a request is done or a reply written: room to read more
        self.room = asyncio.Event()

    def busy(self) -> bool:
        return len(self.tasks) + self.replies.qsize() >= MAX_IN_FLIGHT

    def made_room(self, _: Any = None) -> None:
        self.room.set()

    async def read(self, requests: Any) -> None:
        """Issue every request of the stream; then wait for them and end the replies."""
        try:
            async for msg in requests:
                if self.failure is not None:
                    break
                await self.issue(msg)
                while self.busy() and self.failure is None:
                    self.room.clear()
                    await self.room.wait()
            while self.tasks:
                await asyncio.wait(set(self.tasks))
        finally:
            self.replies.put_nowait(_END)

    async def issue(self, msg: pb.ModelInferRequest) -> None:
        dp = self.dp
        if dp.exiting:
            self.in_order(error_reply(SHUTTING_DOWN, msg, issued=False))
            return
        lease = dp.shm.lease()
        try:
            mv = dp.resolve(msg.model_name, parse_model_version(msg.model_version))
            if codec.costly_request(msg):
                parsed = await asyncio.to_thread(codec.parse_infer_request, msg, lease.read)
            else:
                parsed = codec.parse_infer_request(msg, lease.read)
            request, empty_final = parsed
            if self.options.forward_pattern is not None:
                metadata = self.context.invocation_metadata() or ()
                forward_headers(request, metadata, self.options.forward_pattern)
            lease.reserve(request.outputs)
            mv.signature.validate(request)
        except Exception as exc:
            lease.release()
            if not isinstance(exc, NaiadError):
                log.error("unhandled error reading a gRPC stream request", exc_info=exc)
                exc = InternalError(f"internal error: {type(exc).__name__}: {exc}")
            self.in_order(error_reply(exc.message, msg, issued=False))
            return
        decoupled = mv.config.model_transaction_policy.decoupled
        previous, done = None, None
        if not decoupled:
            previous, done = self.tail, asyncio.get_running_loop().create_future()
            self.tail = done
        self.spawn(self.run(msg, request, mv, lease, empty_final, previous, done))

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(self.made_room)

    def in_order(self, reply: Any) -> None:
        """Queue ``reply`` once every reply the stream owes before it has been queued."""
        previous = self.tail
        if previous is None or previous.done():
            self.replies.put_nowait(reply)
            return
        done = asyncio.get_running_loop().create_future()
        self.tail = done
        self.spawn(self.after(previous, reply, done))

    async def after(self, previous: asyncio.Future, reply: Any, done: asyncio.Future) -> None:
        try:
            await previous
            self.replies.put_nowait(reply)
        finally:
            if not done.done():
                done.set_result(None)

    async def run(
        self,
        msg: pb.ModelInferRequest,
        request: InferRequest,
        mv: Any,
        lease: Any,
        empty_final: bool,
        previous: asyncio.Future | None,
        done: asyncio.Future | None,
    ) -> None:
        """One request: its replies, each queued as soon as it may be written."""
        replies: list[Any] = []
        try:
            try:
                async for response in self.dp.infer_stream(request, mv):
                    if codec.costly_response(response):
                        reply = await asyncio.to_thread(
                            self.reply, msg, request, response, lease, empty_final
                        )
                    else:
                        reply = self.reply(msg, request, response, lease, empty_final)
                    if reply is None:
                        continue
                    if done is None:
                        self.replies.put_nowait(reply)
                    else:
                        replies.append(reply)
            except NaiadError as exc:
                if self.grpc_error:
                    self.fail(exc)
                    return
                replies.append(error_reply(exc.message, msg, issued=True))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a backend bug must not end the stream
                log.error("unhandled error in a gRPC stream request", exc_info=exc)
                error = InternalError(f"internal error: {type(exc).__name__}: {exc}")
                if self.grpc_error:
                    self.fail(error)
                    return
                replies.append(error_reply(error.message, msg, issued=True))
            if previous is not None:
                await previous
            for reply in replies:
                self.replies.put_nowait(reply)
        finally:
            lease.release()
            if done is not None and not done.done():
                done.set_result(None)

    def reply(
        self,
        msg: pb.ModelInferRequest,
        request: InferRequest,
        response: InferResponse,
        lease: Any,
        empty_final: bool,
    ) -> Any:
        if not response.outputs and response.final:
            # a decoupled model's flags-only final response
            return empty_final_reply(msg) if empty_final else None
        out = codec.encode_infer_response(request, response, lease.write)
        out.parameters[FINAL].bool_param = response.final
        return pb.ModelStreamInferResponse(infer_response=out)

    def fail(self, exc: NaiadError) -> None:
        """``triton_grpc_error`` mode: end the stream with ``exc`` and cancel the rest."""
        if self.failure is None:
            self.failure = exc
            for task in self.tasks:
                if task is not asyncio.current_task():
                    task.cancel()
            self.replies.put_nowait(_END)
            self.made_room()

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()


async def serve_stream(service: Any, requests: Any, context: Any) -> None:
    """The ``ModelStreamInfer`` handler: reads ``requests`` (an async iterator of messages) and
    writes replies with ``context.write`` until the client half-closes and every request has
    been answered. Raises the :class:`NaiadError` that ends the stream with a status (restricted
    protocol, ``triton_grpc_error`` mode)."""
    check_restricted(service.options, "ModelStreamInfer", context)
    metadata = context.invocation_metadata() or ()
    grpc_error = any(k == "triton_grpc_error" and v == "true" for k, v in metadata)
    state = _Stream(service, context, grpc_error)
    reader = asyncio.create_task(state.read(requests))
    try:
        while True:
            reply = await state.replies.get()
            if reply is _END:
                break
            await context.write(reply)
            state.made_room()
        if state.failure is not None:
            raise state.failure
        await reader
    finally:
        reader.cancel()
        state.cancel()
