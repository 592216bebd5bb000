"""What naiad's own fronts (``http/fast.py``, ``grpc/h2.py``) do to each TCP connection they
accept."""

from __future__ import annotations

import asyncio
import socket


def no_delay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off on a TCP connection: an answer written in one piece leaves at
    once instead of waiting for the client's ACK of the previous one. Other sockets (Unix)
    are left as they are."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
