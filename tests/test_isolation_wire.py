"""The framing between the server and an instance process over a real socket pair: one reused
pickler per channel (also under concurrent senders), several messages per read, messages split
across reads, the end of the stream, arrays of every kind, and the fast socket's tagged frames:
a message that cannot be read or written fails only its own execution."""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import struct
import threading
from multiprocessing.connection import Connection

import numpy as np
import pytest
from naiad.errors import InternalError
from naiad.isolation.link import LoopLink
from naiad.isolation.wire import SHM_DIR, Channel, FrameReader, Unreadable


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


def test_arrays_of_every_kind_cross_with_their_values_and_writable():
    sender, receiver = _pair(f"naiad-test-wire3-{os.getpid()}-")
    try:
        arrays = {
            "transposed": np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not contiguous
            "scalar": np.array(7, dtype=np.int64),  # 0-d
            "empty": np.zeros((0, 3), dtype=np.uint8),
            "bool": np.array([True, False, True]),
            "big_endian": np.arange(5, dtype=">i4"),
            "fp16": np.linspace(0, 1, 7, dtype=np.float16),
            "bytes": np.array([b"a", b"\x00bc"], dtype=np.object_),  # numpy's own reduction
            "unicode": np.array(["x", "yz"]),
            "large": np.arange(1 << 15, dtype=np.float64),  # 256 KiB: a shared-memory segment
            "numpy_scalar": np.float32(2.5),
        }
        sender.send(("x", arrays))
        (got,) = _read_all(FrameReader(receiver.conn.fileno(), receiver, "test"), 1)
        for name, array in arrays.items():
            out = got[1][name]
            assert type(out) is type(array), name
            if isinstance(array, np.ndarray):
                assert out.dtype == array.dtype and out.shape == array.shape, name
                assert out.tolist() == array.tolist(), name
                assert out.flags.writeable, name  # model code may write into its inputs
        assert any(SHM_DIR.glob(f"naiad-test-wire3-{os.getpid()}-a-*"))  # the large one's
    finally:
        sender.close()
        receiver.close()
    assert not any(SHM_DIR.glob(f"naiad-test-wire3-{os.getpid()}-*"))


def test_tagged_frames_name_their_call_even_when_unreadable():
    sender, receiver = _pair(f"naiad-test-wire4-{os.getpid()}-")
    try:
        fd = sender.conn.fileno()
        sender.send(("ok", 1), call_id=11)
        garbled = struct.pack("!Q", 12) + b"\x80\x05not a pickle"
        os.write(fd, struct.pack("!i", len(garbled)) + garbled)
        os.write(fd, struct.pack("!i", 3) + b"abc")  # too short for a call id: dropped
        sender.send(("ok", 2), call_id=13)
        got = _read_all(FrameReader(receiver.conn.fileno(), receiver, "test", tagged=True), 3)
        assert [call_id for call_id, _ in got] == [11, 12, 13]
        assert got[0][1] == ("ok", 1) and got[2][1] == ("ok", 2)
        assert isinstance(got[1][1], Unreadable)
    finally:
        sender.close()
        receiver.close()


class _Unpicklable:
    def __reduce__(self):
        raise pickle.PicklingError("refused")


def test_the_loop_link_fails_only_the_execution_it_cannot_write_or_read():
    """A LoopLink over a socket whose other end plays the child: an execution that cannot be
    encoded fails on a later turn of the loop, an answer that cannot be decoded fails its own
    execution, and the executions around them get their answers."""
    a, b = socket.socketpair()
    child = Channel(Connection(b.detach()), f"naiad-test-wire5-{os.getpid()}-c")
    conn = Connection(a.detach())
    server = Channel(conn, f"naiad-test-wire5-{os.getpid()}-s")

    async def run() -> dict:
        loop = asyncio.get_running_loop()
        link = LoopLink(loop, conn, server, "the test child")
        answers: dict = {}
        finished = asyncio.Event()

        def done(call_id):
            def record(results, error):
                answers[call_id] = (results, error)
                if len(answers) == 4:
                    finished.set()

            return record

        link.send(1, ["first"], done(1))
        link.send(2, [_Unpicklable()], done(2))
        assert 2 not in answers  # not from inside send: the scheduler is not re-entered
        link.send(3, ["third"], done(3))
        link.send(4, ["fourth"], done(4))

        def play_child():
            reader = FrameReader(child.conn.fileno(), child, "the server", tagged=True)
            got = _read_all(reader, 3)
            assert [call_id for call_id, _ in got] == [1, 3, 4]
            child.send((["one"], None), call_id=1)
            garbled = struct.pack("!Q", 3) + b"garbage"
            os.write(child.conn.fileno(), struct.pack("!i", len(garbled)) + garbled)
            child.send((["four"], None), call_id=4)

        await asyncio.to_thread(play_child)
        await asyncio.wait_for(finished.wait(), 30)
        link.close()
        return answers

    try:
        answers = asyncio.run(run())
    finally:
        child.close()
    assert answers[1] == (["one"], None)
    assert answers[4] == (["four"], None)
    for call_id in (2, 3):
        results, error = answers[call_id]
        assert results is None and isinstance(error, InternalError), call_id
    assert "could not be sent" in str(answers[2][1]) and "refused" in str(answers[2][1])
    assert "unreadable" in str(answers[3][1])


def test_an_array_sent_back_over_the_owners_segment_is_a_view_and_holds_it():
    """The other side answering with a view of what it received (a model returning its input,
    or a slice of it) sends no copy: the owner gets a view of its own segment, which it does
    not reuse for another array until that view is gone and the other side released it."""
    server, child = _pair(f"naiad-test-wire6-{os.getpid()}-")
    try:
        to_child = FrameReader(child.conn.fileno(), child, "test")
        to_server = FrameReader(server.conn.fileno(), server, "test")
        image = np.arange(12 * 64 * 64, dtype=np.float32).reshape(12, 64, 64)  # 192 KiB
        server.send(("exec", image))
        ((_, received),) = _read_all(to_child, 1)
        assert len(server._owned) == 1
        # back: the whole input, a contiguous slice of it, a strided view (copied), a new array
        child.send(("result", received, received[6:], received[:, :, ::2], received * 2))
        ((_, same, part, strided, doubled),) = _read_all(to_server, 1)
        del received
        (name,) = server._owned
        mapped = server._owned[name][1]
        base = np.frombuffer(mapped, dtype=np.uint8).ctypes.data
        assert same.ctypes.data == base  # a view of the server's own segment, not a copy
        assert part.ctypes.data == base + image[6:].ctypes.data - image.ctypes.data
        np.testing.assert_array_equal(same, image)
        np.testing.assert_array_equal(part, image[6:])
        np.testing.assert_array_equal(strided, image[:, :, ::2])
        np.testing.assert_array_equal(doubled, image * 2)
        assert strided.ctypes.data != base and doubled.ctypes.data != base
        assert len(child._owned) == 2  # the strided view and the new array were copied
        # the child is done with it (its release rides on its next message): the server's
        # views still hold the segment, so the next large array gets a fresh one
        child.send(("ping",))
        _read_all(to_server, 1)
        server.send(("exec", image + 1))
        ((_, second),) = _read_all(to_child, 1)
        np.testing.assert_array_equal(second, image + 1)
        assert len(server._owned) == 2
        del second
        # the server's views gone: with the child's release of the second segment, both are
        # free; two more arrays reuse them
        del same, part
        child.send(("ping",))
        _read_all(to_server, 1)
        server.send(("exec", image + 2, image + 3))
        ((_, third, fourth),) = _read_all(to_child, 1)
        np.testing.assert_array_equal(third, image + 2)
        np.testing.assert_array_equal(fourth, image + 3)
        assert len(server._owned) == 2
    finally:
        server.close()
        child.close()
    assert not any(SHM_DIR.glob(f"naiad-test-wire6-{os.getpid()}-*"))
