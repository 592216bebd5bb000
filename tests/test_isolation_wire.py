"""The framing between the server and an instance process over a real socket pair: one reused
pickler per channel (also under concurrent senders), several messages per read, messages split
across reads, the end of the stream."""

from __future__ import annotations

import os
import socket
import threading
from multiprocessing.connection import Connection

import numpy as np
import pytest
from naiad.isolation.wire import Channel, FrameReader


def _pair(prefix: str) -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    return Channel(Connection(a.detach()), prefix + "a"), Channel(
        Connection(b.detach()), prefix + "b"
    )


def _read_all(reader: FrameReader, count: int) -> list:
    got: list = []
    while len(got) < count:
        messages = reader.read()
        assert messages is not None
        got.extend(messages)
    return got


def test_messages_in_one_read_and_split_across_reads():
    sender, receiver = _pair(f"naiad-test-wire-{os.getpid()}-")
    try:
        small = np.arange(4, dtype=np.float32)
        for i in range(5):  # several frames arrive before the first read
            sender.send(("x", i, {"a": small * i}))
        fd = receiver.conn.fileno()
        reader = FrameReader(fd, receiver, "test", size=64)  # smaller than one message
        got = _read_all(reader, 5)
        assert [m[1] for m in got] == list(range(5))
        for i, (_kind, _n, arrays) in enumerate(got):
            np.testing.assert_array_equal(arrays["a"], small * i)
            assert arrays["a"].flags.writeable
        # a message larger than the socket buffer, written by a thread while we read
        big = b"z" * (3 << 20)
        writer = threading.Thread(target=sender.send, args=(("big", big),))
        writer.start()
        (message,) = _read_all(FrameReader(fd, receiver, "test"), 1)
        writer.join()
        assert message == ("big", big)
        # nothing waits: a read that must not wait says so
        reader = FrameReader(fd, receiver, "test")
        with pytest.raises(BlockingIOError):
            reader.read(wait=False)
        reader.close()
        sender.close()
        assert FrameReader(fd, receiver, "test").read() is None  # the end of the stream
    finally:
        sender.close()
        receiver.close()


def test_concurrent_senders_share_the_pickler_safely():
    sender, receiver = _pair(f"naiad-test-wire2-{os.getpid()}-")
    try:
        threads = [
            threading.Thread(
                target=lambda t=t: [
                    sender.send((t, i, np.full(3, i, np.int64))) for i in range(200)
                ]
            )
            for t in range(4)
        ]
        for t in threads:
            t.start()
        got = _read_all(FrameReader(receiver.conn.fileno(), receiver, "test"), 800)
        for t in threads:
            t.join()
        seen: dict[int, list[int]] = {}
        for t, i, array in got:
            np.testing.assert_array_equal(array, np.full(3, i, np.int64))
            seen.setdefault(t, []).append(i)
        assert seen == {t: list(range(200)) for t in range(4)}  # each sender's order kept
    finally:
        sender.close()
        receiver.close()
