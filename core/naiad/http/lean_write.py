"""Answer heads for the lean front (:mod:`naiad.http.fast`), as aiohttp would write them."""

from __future__ import annotations

import http
import time
from collections.abc import Mapping
from email.utils import formatdate

from aiohttp.http import SERVER_SOFTWARE

_SERVER = SERVER_SOFTWARE.encode()
_STATUS = {s.value: b"%d %s" % (s.value, s.phrase.encode()) for s in http.HTTPStatus}


class Date:
    """The ``Date`` header value, formatted once a second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.value = formatdate(now, usegmt=True).encode()
        return self.value


def answer_head(
    status: int,
    length: int,
    content_type: str | None,
    headers: Mapping[str, str] | None,
    close: bool,
    date: bytes,
) -> bytes:
    """The status line and headers of an answer with a ``length``-byte body."""
    extra = b""
    if headers:
        extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items())
    if close:
        extra += b"Connection: close\r\n"
    if content_type is not None:
        extra = b"Content-Type: %s\r\n%s" % (content_type.encode(), extra)
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\nDate: %s\r\nServer: %s\r\n%s\r\n" % (
        _STATUS.get(status) or b"%d Unknown" % status,
        length,
        date,
        _SERVER,
        extra,
    )


#: answer heads kept per second (a client in a loop gets the same few over and over)
HEADS_MAX = 256


class Heads:
    """Answer heads by what they say, made once a second (the ``Date`` changes each second)."""

    __slots__ = ("date", "_second", "_cache")

    def __init__(self) -> None:
        self.date = Date()
        self._second = -1
        self._cache: dict[tuple, bytes] = {}

    def get(
        self,
        status: int,
        length: int,
        content_type: str | None,
        headers: Mapping[str, str] | None,
        close: bool,
    ) -> bytes:
        """:func:`answer_head` with the current ``Date``."""
        now = int(time.time())  # Date.get, written out: this runs for every answer
        cache = self._cache
        date = self.date
        if now != self._second:
            self._second = date.second = now
            date.value = formatdate(now, usegmt=True).encode()
            cache.clear()
        key = (status, length, content_type, tuple(headers.items()) if headers else None, close)
        head = cache.get(key)
        if head is None:
            if len(cache) >= HEADS_MAX:
                cache.clear()
            head = cache[key] = answer_head(
                status, length, content_type, headers, close, date.value
            )
        return head
