"""The event loop's own line to an instance process: executions written and results read on
the loop, with no thread in between (two thread wake-ups per execution, as in thread mode:
loop → child, child → loop).

Each child has a second socket for this (the first, with its reader thread, carries the life
cycle, BLS and model-control calls, decoupled streams and blocking executions). The loop writes
an execution without blocking: what the socket does not take at once waits in a buffer until it
is writable. Results are read with ``loop.add_reader`` and framed incrementally (the framing of
:class:`multiprocessing.connection.Connection`, each frame led by its execution's call id
outside the pickle: an answer that cannot be read fails its own execution, not the link). The
link never decides that the child died: the reader thread sees that, says why, and fails what
is pending here through :meth:`LoopLink.fail_all`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from ..errors import InternalError
from .wire import Channel, FrameReader, Unreadable

log = logging.getLogger(__name__)

#: a result callback: ``done(results, error)``, on the loop
Done = Callable[[Any, BaseException | None], None]


class LoopLink:
    """One child generation's fast socket, driven by the event loop (loop thread only)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, conn: Connection, channel: Channel, label: str
    ) -> None:
        self.loop = loop
        self.conn = conn
        self.channel = channel
        self.label = label
        self.fd = conn.fileno()
        self.pending: dict[int, Done] = {}
        #: bytes not written yet: waiting for the socket to be writable, or for the end of
        #: this turn of the loop (while the child has executions to run, the ones submitted
        #: meanwhile go in one write: the child is not woken nor the loop preempted per one)
        self._out = bytearray()
        self._writing = False  # add_writer is on
        self._reader = FrameReader(self.fd, channel, label, tagged=True)
        self._open = True
        os.set_blocking(self.fd, False)
        loop.add_reader(self.fd, self._readable)

    def send(self, call_id: int, message: Any, done: Done) -> None:
        """Write ``message`` (an execution) as call ``call_id``; ``done`` gets its results
        (on a later turn of the loop, also when the message cannot be encoded)."""
        try:
            data = self.channel.framed(message, call_id)
        except Exception as exc:  # e.g. a parameter pickle refuses: fails this execution only
            error = InternalError(f"the execution could not be sent to {self.label}: {exc}")
            self.loop.call_soon(done, None, error)
            return
        self.pending[call_id] = done
        if self._out:  # earlier bytes still wait: keep the order
            self._out += data
            return
        if len(self.pending) > 1:  # the child is busy: this one can go with others, later
            self._out += data
            self.loop.call_soon(self._flush)
            return
        try:
            sent = os.write(self.fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # the child is gone: the reader thread fails what is pending
        if sent < len(data):
            self._out += data[sent:]
            self._writing = True
            self.loop.add_writer(self.fd, self._writable)

    def _flush(self) -> None:
        if self._out and not self._writing and self._open:
            self._writable()

    def _writable(self) -> None:
        """Write what waits in ``_out``; watch for writability while some is left."""
        try:
            sent = os.write(self.fd, self._out)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = len(self._out)  # the child is gone
        del self._out[:sent]
        if self._out:
            if not self._writing:
                self._writing = True
                self.loop.add_writer(self.fd, self._writable)
        elif self._writing:
            self._writing = False
            self.loop.remove_writer(self.fd)

    def _readable(self) -> None:
        try:
            messages = self._reader.read()
        except BlockingIOError:
            return
        if messages is None:  # the child closed its end (it exited): stop watching
            self.loop.remove_reader(self.fd)
            return
        for call_id, message in messages:
            self._deliver(call_id, message)

    def _deliver(self, call_id: int, message: Any) -> None:
        done = self.pending.pop(call_id, None)
        if done is None:
            return
        if isinstance(message, Unreadable):
            results, error = (
                None,
                InternalError(f"the answer of {self.label} was unreadable: {message}"),
            )
        else:
            results, error = message
        try:
            done(results, error)
        except Exception:  # a scheduler bug must not lose the other results read
            log.exception("handling a result from %s failed", self.label)

    def fail_all(self, error: BaseException) -> None:
        """The child died: every pending execution fails with ``error``."""
        pending, self.pending = self.pending, {}
        for done in pending.values():
            try:
                done(None, error)
            except Exception:
                log.exception("failing an execution of %s failed", self.label)

    def close(self) -> None:
        if self._open:
            self._open = False
            self.loop.remove_reader(self.fd)
            if self._writing:
                self.loop.remove_writer(self.fd)
            self.channel.close()
