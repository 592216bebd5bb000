"""What a client of the lean gRPC front (:mod:`naiad.grpc.front`) can hold, and its TLS.

The limits are the HTTP lean front's (:mod:`naiad.http.fast`), in the same units:

- a new connection has ``--http-header-timeout`` seconds for its TLS handshake (asyncio's
  ``ssl_handshake_timeout``) and then its preface and SETTINGS; a connection that has not opened
  a stream by then (nothing of a call arrived) is closed, one idle (no stream open, nothing
  received) for :data:`IDLE_TIMEOUT` gets GOAWAY and is closed;
- a stream whose request message stops arriving mid-way for ``--http-body-timeout`` seconds is
  reset (RST_STREAM CANCEL), unless naiad itself holds it back (flow control, the budget);
- messages larger than :data:`~naiad.http.fast.SMALL_BODY` reserve their announced length from
  a budget of :data:`~naiad.http.fast.MAX_BUFFERED` bytes shared by every connection of the
  front (:class:`Budget`); a connection whose message does not fit stops being read until
  others are done with theirs;
- complete messages a stream's consumer has not taken stop the refilling of its windows
  (:meth:`naiad.grpc.h2.H2Protocol.credit`): at most 16 MiB per stream and 64 MiB per
  connection wait in naiad.
"""

from __future__ import annotations

import logging
import ssl
from collections import deque
from typing import Protocol

from ..http.fast import MAX_BUFFERED, SMALL_BODY
from .config import GrpcConfig

log = logging.getLogger(__name__)

#: seconds a connection with no stream open and nothing received is kept
IDLE_TIMEOUT = 300.0
__all__ = ["IDLE_TIMEOUT", "MAX_BUFFERED", "SMALL_BODY", "Budget", "tls_context"]


class Holder(Protocol):
    """A connection that reserves message bytes."""

    reserved: int
    wanted: int

    def granted(self) -> None: ...

    def is_open(self) -> bool: ...


class Budget:
    """Message bytes buffered by all connections of a front, reserved from each large
    message's announced length; one that does not fit waits (its connection not read)."""

    def __init__(self, limit: int = MAX_BUFFERED) -> None:
        self.limit = limit
        self.buffered = 0
        self.waiting: deque[tuple[Holder, int]] = deque()

    def reserve(self, holder: Holder, size: int) -> bool:
        """Reserve ``size`` more bytes for ``holder``: True if granted now, else it waits.
        What it holds already never keeps it waiting (it could not finish to release it)."""
        if self.buffered + size <= self.limit or self.buffered == holder.reserved:
            self.buffered += size
            holder.reserved += size
            return True
        holder.wanted += size
        self.waiting.append((holder, size))
        return False

    def release(self, holder: Holder, size: int) -> None:
        """``holder`` is done with ``size`` bytes (a reservation still waiting is dropped)."""
        for i, entry in enumerate(self.waiting):
            if entry == (holder, size):
                del self.waiting[i]
                holder.wanted -= size
                if not holder.wanted:
                    holder.granted()
                return
        size = min(size, holder.reserved)
        holder.reserved -= size
        self.buffered -= size
        self._grant()

    def forget(self, holder: Holder) -> None:
        """``holder`` is gone: what it holds and waits for is released."""
        holder.wanted = 0
        self.waiting = deque(w for w in self.waiting if w[0] is not holder)
        self.release(holder, holder.reserved)

    def _grant(self) -> None:
        while self.waiting:
            holder, size = self.waiting[0]
            if not holder.is_open():
                self.waiting.popleft()
                continue
            if self.buffered + size > self.limit and self.buffered != holder.reserved:
                break
            self.waiting.popleft()
            self.buffered += size
            holder.reserved += size
            holder.wanted -= size
            if not holder.wanted:
                holder.granted()


def tls_context(cfg: GrpcConfig) -> ssl.SSLContext:
    """The server's TLS (1.2 or later, ALPN ``h2``) from ``--grpc-server-cert`` / ``-key``;
    ``--grpc-use-ssl-mutual`` requires a client certificate signed by ``--grpc-root-cert``
    (a root certificate without ``-mutual`` verifies a certificate the client shows, as
    grpcio's ``require_client_auth=False`` does). A file that does not load stops start-up."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    try:
        context.load_cert_chain(cfg.server_cert, cfg.server_key)
        if cfg.root_cert:
            context.load_verify_locations(cfg.root_cert)
            context.verify_mode = ssl.CERT_REQUIRED if cfg.use_ssl_mutual else ssl.CERT_OPTIONAL
        elif cfg.use_ssl_mutual:
            raise ssl.SSLError("--grpc-use-ssl-mutual needs --grpc-root-cert")
    except (OSError, ssl.SSLError) as exc:
        log.error("unable to set up TLS for gRPC: %s", exc)
        raise SystemExit(1) from exc
    return context
