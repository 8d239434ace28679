"""The fast path's view of a request: its head parsed just enough, and what access checks see."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from streamgate.edge import metrics
from streamgate.edge.playback.names import BadMediaPath, parse_media_path

METHODS = {b"GET": "GET", b"HEAD": "HEAD"}
# A body, an upgrade, or whitespace before a colon (RFC 9112 section 5.1 says reject): aiohttp.
_HANDOFF_MARKERS = (b"\r\ncontent-length:", b"\r\ntransfer-encoding:", b"\r\nupgrade:",
                    b"\r\nexpect:", b" :", b"\t:", b"\r\n ", b"\r\n\t")


# The only heads the fast path answers itself (RFC 9112 sections 3 and 5): a GET/HEAD request
# line, then token ":" field-value lines, CRLF only. A bare LF or CR, NUL or any other control
# byte, or a name that is not a token hands the connection to aiohttp, whose parser refuses it
# (400 and close): a proxy that reads bare LF as a line end would otherwise see other requests
# than this edge does (request smuggling, issue 14).
_STRICT_HEAD = re.compile(rb"(?:GET|HEAD) [\x21-\x7e]+ HTTP/1\.[01]"
                          rb"(?:\r\n[-!#$%&'*+.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*)*")


class FastPathUnsupported(Exception):
    """The request needs something only aiohttp's full request object has.

    Not an AttributeError: ``getattr(request, name, default)`` or ``hasattr`` in an access check
    would read "absent" and decide on it, where the request must go to aiohttp instead.
    """


class PlaybackRequest:
    """What an access check sees on the fast path; the rest of ``web.Request`` is not here."""

    __slots__ = ("app", "method", "_target", "_head", "_headers", "match_info", "_state")

    def __init__(self, app: web.Application, method: str, target: bytes, head: bytes,
                 match_info: dict[str, str]) -> None:
        self.app = app
        self.method = method
        self._target = target
        self._head = head
        self._headers: CIMultiDictProxy[str] | None = None
        self.match_info = match_info
        self._state: dict[str, Any] | None = None

    @property
    def path(self) -> str:
        return self._target.decode("ascii")

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        # Built on first use: a public video's check never reads the headers.
        if self._headers is None:
            pairs = (line.partition(b":") for line in self._head.split(b"\r\n")[1:])
            self._headers = CIMultiDictProxy(CIMultiDict(
                (k.decode("latin-1"), v.strip().decode("latin-1")) for k, _, v in pairs))
        return self._headers

    def __getattr__(self, name: str) -> Any:
        raise FastPathUnsupported(f"PlaybackRequest has no {name!r}: answered by aiohttp")

    def __getitem__(self, key: str) -> Any:
        if self._state is None:
            raise KeyError(key)
        return self._state[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if self._state is None:
            self._state = {}
        self._state[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        return default if self._state is None else self._state.get(key, default)


class Request:
    """A parsed head. Never changed after parsing: a plain one is shared by every connection
    that sends the same head bytes (``FastPath.plans``)."""

    __slots__ = ("method", "target", "keep_alive", "head", "lower", "video_id", "rel",
                 "token", "route", "plain", "tail", "is_get", "local", "http10", "absent_until")

    method: bytes
    target: bytes
    keep_alive: bool
    head: bytes
    lower: bytes
    connection: bytes
    video_id: str
    rel: str
    token: str | None
    route: str
    plain: bool
    tail: bytes
    is_get: bool
    http10: bool
    local: tuple[str, str] | None  # (file path, video dir), filled on first local answer
    # Until when (monotonic) the fast path takes the file as not on disk and asks the hot tiers
    # first (edge/fastpath/protocol.py answer_now); the full path always looks again.
    absent_until: float


# Heads with none of these (and no token) are "plain": the answer is the entry's 200 as built.
_CONDITIONAL_MARKERS = (b"\r\nrange:", b"\r\nif-none-match:", b"\r\nif-range:")


def header_value(request: Request, marker: bytes) -> bytes | None:
    """The value of the header ``marker`` (``b"\\r\\nname:"``), first occurrence, stripped."""
    i = request.lower.find(marker)
    if i < 0:
        return None
    start = i + len(marker)
    end = request.head.find(b"\r\n", start)
    return (request.head[start:] if end < 0 else request.head[start:end]).strip()


# Validated targets: (token, video id, rel, route class) by the raw request target.
TARGET_CACHE_SIZE = 4096
Target = tuple[str | None, str, str, str]


def parse_target(target: bytes) -> Target | None:
    """A playback target's parts, or None for anything aiohttp should answer."""
    try:
        path = target.decode("ascii")
    except UnicodeDecodeError:
        return None
    token = None
    if path.startswith("/s/"):
        token, sep, path = path[3:].partition("/")
        if not sep or not token:
            return None
        path = "/" + path
    if not path.startswith("/videos/"):
        return None
    video_id, _, rel = path[8:].partition("/")
    try:
        video_id, rel = parse_media_path(video_id, rel)
    except BadMediaPath:
        return None  # aiohttp answers it with the precise 400
    return token, video_id, rel, metrics.route_class(rel)


def parse_head(head: bytes, targets: dict[bytes, Target]) -> Request | None:
    """A request head (without its final CRLF CRLF) the fast path can answer, or None."""
    if _STRICT_HEAD.fullmatch(head) is None:
        return None
    eol = head.find(b"\r\n")
    parts = (head if eol < 0 else head[:eol]).split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if method not in METHODS or version not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    if b"%" in target or b"?" in target or b"\\" in target:
        return None
    # Header values are looked up by substring in the lowered head, only when needed;
    # anything that could carry a body or bend the framing goes to aiohttp's parser.
    lower = head.lower()
    for marker in _HANDOFF_MARKERS:
        if marker in lower:
            return None
    # RFC 9112 section 3.2: exactly one Host in 1.1 (aiohttp answers 400 otherwise), at most one in 1.0.
    hosts = lower.count(b"\r\nhost:")
    if hosts > 1 or (hosts == 0 and version == b"HTTP/1.1"):
        return None
    parsed = targets.get(target)
    if parsed is None:
        parsed = parse_target(target)
        if parsed is None:
            return None
        if len(targets) >= TARGET_CACHE_SIZE:
            targets.clear()
        targets[target] = parsed
    request = Request()
    request.token, request.video_id, request.rel, request.route = parsed
    request.head = head
    request.lower = lower
    tokens = connection_tokens(lower) if b"\r\nconnection:" in lower else ()
    request.http10 = version == b"HTTP/1.0"
    # As aiohttp's parser (llhttp_should_keep_alive) decides, and answers: 1.1 keeps the
    # connection unless a "close" token, 1.0 only with a "keep-alive" token.
    request.keep_alive = (b"keep-alive" in tokens) if request.http10 else (b"close" not in tokens)
    request.method = method
    request.is_get = method == b"GET"
    request.target = target
    request.plain = parsed[0] is None and not any(m in lower for m in _CONDITIONAL_MARKERS)
    if request.http10:
        request.tail = b"Connection: keep-alive\r\n" if request.keep_alive else b""
    else:
        request.tail = b"" if request.keep_alive else b"Connection: close\r\n"
    request.local = None
    request.absent_until = 0.0
    return request


def connection_tokens(lower: bytes) -> set[bytes]:
    """The tokens of every Connection field of a lowered head (a comma-separated list, RFC 9110 section 7.6.1)."""
    tokens: set[bytes] = set()
    for line in lower.split(b"\r\n")[1:]:
        if line.startswith(b"connection:"):
            tokens.update(t.strip(b" \t") for t in line[11:].split(b","))
    return tokens
