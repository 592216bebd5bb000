"""Request heads for the lean front (:mod:`naiad.http.fast`): parsing, and which table entry.

Heads are parsed by llhttp (``httptools``), once per distinct head. Everything the front does
not fully understand — a route not marked lean in the endpoint table, a query string or a
percent-escape in the path, ``Transfer-Encoding``, ``Expect``, ``Upgrade``, HTTP/1.0, a repeated
header, a head llhttp refuses or one ended by bare LFs — is :data:`NOT_OURS`: the front hands the
connection to aiohttp, which stays the complete implementation of the API.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from typing import Final

import httptools

from .edge import Endpoint

#: a head that has not ended within this many bytes goes to aiohttp (which answers 400 / 431)
MAX_HEAD = 16 * 1024
#: aiohttp's limits on one request or header line and on the number of headers: beyond them
#: the front hands over and aiohttp answers (400)
MAX_LINE = 8190
MAX_HEADERS = 100

#: the characters of a head the front takes at all (visible ASCII, space, tab, CR LF):
#: anything else is aiohttp's to judge
_HEAD_CHARS = bytes(range(0x20, 0x7F)) + b"\t\r\n"


class _NotOurs(enum.Enum):
    """What the front hands to aiohttp instead of answering (the one member is the token)."""

    TOKEN = 0


NOT_OURS: Final = _NotOurs.TOKEN

#: the one shape of parametrised path the lean front takes: a model, maybe a version, a tail
_MODEL_PATH = re.compile(r"(/[a-z0-9/]+/)\{model\}(/versions/\{version:\[0-9\]\+\})?(?:/(\w+))?")


class LeanRoutes:
    """The lean entries of the endpoint table as two lookups, derived once at start: fixed
    paths, and per-model paths by (method, tail, with a version)."""

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self.fixed: dict[tuple[bytes, bytes], Endpoint] = {}
        self.tails: dict[tuple[bytes, bytes, bool], Endpoint] = {}
        self.prefix = b""
        #: heads seen lately and what they parsed to: a client in a loop sends the same head
        self.heads: dict[bytes, LeanHead] = {}
        for e in endpoints:
            if not e.lean:
                continue
            method = e.method.encode()
            if "{" not in e.path:
                self.fixed.setdefault((method, e.path.encode()), e)
                continue
            m = _MODEL_PATH.fullmatch(e.path)
            if m is None or (self.prefix and self.prefix != m[1].encode()):
                raise ValueError(f"the lean front cannot answer {e.method} {e.path}")
            self.prefix = m[1].encode()
            tail = (m[3] or "").encode()
            self.tails.setdefault((method, tail, m[2] is not None), e)

    def find(self, method: bytes, target: bytes) -> tuple[Endpoint, dict[str, str]] | _NotOurs:
        """The entry and path parameters of a request, ``NOT_OURS`` when none is lean.

        A model name is one non-empty path segment, a version only digits (as the aiohttp
        patterns say).
        """
        if not target.isascii():
            return NOT_OURS
        if b"%" in target or b"?" in target or b"#" in target or b"/." in target or b"//" in target:
            return NOT_OURS
        fixed = self.fixed.get((method, target))
        if fixed is not None:
            return fixed, {}
        prefix = self.prefix
        if not prefix or not target.startswith(prefix):
            return NOT_OURS
        segments = target[len(prefix) :].split(b"/")
        name = segments[0]
        if not name or b"{" in name or b"}" in name:
            return NOT_OURS
        params = {"model": name.decode()}
        rest = segments[1:]
        if rest and rest[0] == b"versions":
            if len(rest) < 2 or not rest[1].isdigit():
                return NOT_OURS
            params["version"] = rest[1].decode()
            rest = rest[2:]
        if len(rest) > 1:
            return NOT_OURS
        tail = rest[0] if rest else b""
        if not tail and rest:  # a trailing slash
            return NOT_OURS
        endpoint = self.tails.get((method, tail, "version" in params))
        if endpoint is None:
            return NOT_OURS
        return endpoint, params


class LeanHead:
    """What one request head says; shared by every request with the same head (never changed).

    ``endpoint`` is None for a body over the size limit (answered 413 from the head).
    """

    __slots__ = (
        "endpoint",
        "method",
        "path",
        "params",
        "headers",
        "keep_alive",
        "body_start",
        "end",
    )

    def __init__(
        self,
        endpoint: Endpoint | None,
        method: str,
        path: str,
        params: dict[str, str],
        headers: dict[str, str],
        keep_alive: bool,
        body_start: int,
        end: int,
    ) -> None:
        self.endpoint = endpoint
        self.method = method
        self.path = path
        self.params = params
        self.headers = headers
        self.keep_alive = keep_alive
        self.body_start = body_start
        self.end = end


#: heads kept per front (the cache is emptied when it fills up)
_HEADS_MAX = 512


def parse_head(
    buf: bytes | bytearray, pos: int, max_input: int, routes: LeanRoutes
) -> LeanHead | _NotOurs | None:
    """The request at ``buf[pos:]``; None while its head is incomplete, ``NOT_OURS`` when
    aiohttp must answer it. The request's body offsets count from ``pos``.

    A head is parsed by llhttp (``httptools``, the parser aiohttp's own C parser is), and kept
    by its exact bytes: the next request with the same head is not parsed again.
    """
    end = buf.find(b"\r\n\r\n", pos)
    if end < 0:
        if len(buf) - pos > MAX_HEAD or buf.find(b"\n\n", pos) >= 0:
            return NOT_OURS  # too long, or ended by bare LFs: aiohttp answers 400
        return None
    if end - pos > MAX_HEAD:
        return NOT_OURS
    head = buf[pos : end + 4] if isinstance(buf, bytes) else bytes(memoryview(buf)[pos : end + 4])
    heads = routes.heads
    req = heads.get(head)
    if req is not None and (req.end - req.body_start > max_input) == (req.endpoint is None):
        return req  # (a head judged against another limit is parsed again)
    parsed = _parse_head(head, max_input, routes)
    if isinstance(parsed, LeanHead):
        if len(heads) >= _HEADS_MAX:
            heads.clear()
        heads[head] = parsed
    return parsed


class _Head:
    """httptools callbacks: the target and headers of one head (``repeated`` if any repeats)."""

    __slots__ = ("url", "headers", "repeated", "complete")

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.repeated = False
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower()
        if key in self.headers:
            self.repeated = True
        self.headers[key] = value

    def on_headers_complete(self) -> None:
        self.complete = True


def _parse_head(head: bytes, max_input: int, routes: LeanRoutes) -> LeanHead | _NotOurs:
    """``head`` (ending in CRLF CRLF) as the front's request, or ``NOT_OURS``."""
    if head.translate(None, _HEAD_CHARS):  # only visible ASCII
        return NOT_OURS
    lines = head.count(b"\n")
    if lines > MAX_HEADERS + 2 or max(map(len, head.split(b"\r\n"))) > MAX_LINE:
        return NOT_OURS
    parsed = _Head()
    parser = httptools.HttpRequestParser(parsed)
    try:
        parser.feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return NOT_OURS  # aiohttp's llhttp says the same: it answers 400
    headers = parsed.headers
    if not parsed.complete or parsed.repeated or parser.get_http_version() != "1.1":
        return NOT_OURS
    if b"transfer-encoding" in headers or b"expect" in headers or b"upgrade" in headers:
        return NOT_OURS
    if b"host" not in headers:  # HTTP/1.1 requires it; aiohttp answers 400
        return NOT_OURS
    method = parser.get_method()
    found = routes.find(method, parsed.url)
    if found is NOT_OURS:
        return NOT_OURS
    keep_alive = True
    connection = headers.get(b"connection")
    if connection is not None:
        # (llhttp's should_keep_alive() reads the next message's state once a head without a
        # body is complete)
        tokens = {t.strip() for t in connection.lower().split(b",")}
        if b"upgrade" in tokens:
            return NOT_OURS
        keep_alive = b"close" not in tokens
    endpoint: Endpoint | None
    endpoint, params = found
    length = int(headers.get(b"content-length", b"0"))  # llhttp checked: digits only
    body_start = len(head)
    if length > max_input:
        endpoint = None
    text = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()}
    return LeanHead(
        endpoint,
        method.decode(),
        parsed.url.decode(),
        params,
        text,
        keep_alive,
        body_start,
        body_start + length,
    )
