"""The lean HTTP/1.1 path for playback GET/HEAD: prebuilt headers, then bytes or sendfile.

Every connection starts here. A request this path fully understands (GET or HEAD of a valid
playback name, no body, at most a single Range, If-None-Match) is answered directly from the
open-file cache: one ``writev`` for a hot object, ``writev`` + ``sendfile`` for a segment, on
the transport's socket (edge/fastpath/sendfile.py). Anything else (other routes, percent-encoding, a
query string, odd headers, oversized or malformed requests) hands the connection, with the bytes
already read, to aiohttp's own protocol for good, so aiohttp stays the one complete HTTP server
and its error answers stay the reference.

Access: ``access.authorize_playback`` gets a ``PlaybackRequest`` (edge/fastpath/request.py) carrying
what an access check reads (``match_info`` with ``id`` and ``token``, ``headers``, ``app``,
``method``, ``path``). An access check that reads anything else raises ``FastPathUnsupported``,
and the request is replayed through aiohttp.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import cast

from aiohttp import web

from streamgate.edge import stores
from streamgate.edge.access import playback as access
from streamgate.edge.errors import HTTPError
from streamgate.edge.fastpath import inline
from streamgate.edge.fastpath.request import (
    METHODS,
    FastPathUnsupported,
    PlaybackRequest,
    Request,
    Target,
    header_value,
    parse_head,
)
from streamgate.edge.fastpath.sendfile import DirectWrite, socket_fd
from streamgate.edge.playback.conditional import RangeNotSatisfiable, parse_range
from streamgate.edge.playback.delivery import Delivery
from streamgate.edge.playback.files import Servable
from streamgate.edge.playback.hotcache import HotRecord
from streamgate.edge.playback.names import http_date

log = logging.getLogger("streamgate.edge.fastpath.protocol")

# Plain heads (see fastrequest.Request) by their bytes: a client sends the same head for the same
# URL, so the parse is done once. Bounded; only short heads are kept.
PLAN_CACHE_SIZE = 4096
PLAN_MAX_HEAD = 1024
_OK_LINE = b"HTTP/1.1 200 OK\r\n"
# Bytes kept unread while an answer is in flight, in max_header_size units: past it, reading
# pauses until the connection is free (TCP pushes back on a client that pipelines without end).
BUSY_BUFFER_HEADS = 4

_REASONS = {200: b"OK", 206: b"Partial Content", 304: b"Not Modified", 400: b"Bad Request",
            401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
            416: b"Range Not Satisfiable", 429: b"Too Many Requests", 500: b"Internal Server Error",
            502: b"Bad Gateway", 503: b"Service Unavailable"}
class FastPath:
    """Per-process state the fast connections share."""

    def __init__(self, app: web.Application, delivery: Delivery,
                 fallback: Callable[[], asyncio.Protocol], client_timeout_s: float,
                 max_header_size: int, write_timeout_s: float | None = None) -> None:
        self.app = app
        self.delivery = delivery
        self.fallback = fallback
        # Waiting for a request head (read) and for a response write to move (write).
        self.client_timeout_s = client_timeout_s
        self.write_timeout_s = client_timeout_s if write_timeout_s is None else write_timeout_s
        self.max_header_size = max_header_size
        self.connections: set[FastConnection] = set()
        self.targets: dict[bytes, Target] = {}
        self.plans: dict[bytes, Request] = {}
        self.files = delivery.files
        self.media_root = delivery.media_root
        self.metrics = delivery.metrics
        # The access check's own in-process verdicts (edge/access/playback.py, stores.ACCESS_CACHE): a
        # plain request for a video it currently knows as not private is answered without
        # running the check's coroutine, which would return at once for it. Everything else
        # (tokens, private or unknown-to-the-cache videos, an expired entry) runs the check.
        self.open_access = stores.CATALOG not in app  # delivery-only app: access.py lets all pass
        self.access_cache = app.get(stores.ACCESS_CACHE)
        self._date_second = 0
        self._date_line = b""
        self.handoffs = 0

    def __call__(self) -> FastConnection:
        return FastConnection(self)

    def date_line(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self._date_second:
            self._date_second = second
            self._date_line = b"Date: " + http_date(now).encode() + b"\r\n"
        return self._date_line

    async def sweep(self) -> None:
        """Close connections idle or stalled past ``edge.client_timeout`` (slow clients)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.client_timeout_s / 2, self.write_timeout_s / 2))
            now = loop.time()
            for conn in [c for c in self.connections if c.deadline < now]:
                write = conn.write
                if write is not None and write.sent != conn.sent_mark:
                    # A long download that still moves is not a slow client.
                    conn.sent_mark = write.sent
                    conn.deadline = now + self.write_timeout_s
                    continue
                conn.expire()

    async def close(self) -> None:
        tasks = [c.task for c in self.connections if c.task is not None]
        for conn in list(self.connections):
            conn.expire()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class FastConnection(asyncio.Protocol):
    # Slots: thousands of idle keep-alive connections each cost this object (bench/connections.py).
    __slots__ = ("fastpath", "transport", "loop", "buf", "busy", "closing", "eof", "paused", "sock_fd",
                 "wait_fd", "sock", "sent_mark", "deadline", "write", "entry", "task", "inline")

    def __init__(self, fastpath: FastPath) -> None:
        self.fastpath = fastpath
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.buf = b""
        self.busy = False
        self.closing = False
        self.eof = False  # half-closed by the client: answer what is buffered, then close
        self.paused = False
        self.sock_fd = -1
        self.wait_fd = -1
        self.sock: socket.socket | None = None
        self.sent_mark = -1
        self.deadline = 0.0
        self.write: DirectWrite | None = None
        self.entry: Servable | None = None
        self.task: asyncio.Task[None] | None = None
        self.inline = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's protocol: its transport is a Transport (the ABC types the hook wider).
        self.transport = cast(asyncio.Transport, transport)
        self.sock_fd = socket_fd(transport)
        self.deadline = self.loop.time() + self.fastpath.client_timeout_s
        self.fastpath.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if not self.busy:
            self.process()
        else:
            self._pace()

    def _pace(self) -> None:
        """Stop reading while busy with a full buffer; process() resumes once the connection is free."""
        if not self.paused and len(self.buf) > self.fastpath.max_header_size * BUSY_BUFFER_HEADS:
            self.paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        # The client will send no more; answer what is in flight and buffered, then close.
        self.eof = True
        return self.busy

    def connection_lost(self, exc: Exception | None) -> None:
        self.fastpath.connections.discard(self)
        self.closing = True
        if self.write is not None:
            self.write.cancel()
            self.write = None
        self._close_wait_fd()
        self._release()
        if self.task is not None:
            self.task.cancel()

    def _dup(self) -> socket.socket:
        """The connection's dup, made on its first file answer and kept for its life.

        It is the writability watch (no dup/close per request) and a socket object for send
        flags. Made lazily: an idle connection, or one that only ever gets small bodies, holds
        one descriptor, not two.
        """
        if self.sock is None:
            self.sock = socket.socket(fileno=os.dup(self.sock_fd))
            self.wait_fd = self.sock.fileno()
        return self.sock

    def _close_wait_fd(self) -> None:
        if self.wait_fd >= 0:
            self.loop.remove_writer(self.wait_fd)
            assert self.sock is not None  # made together with wait_fd in _dup
            self.sock.close()
            self.sock = None
            self.wait_fd = -1

    def expire(self) -> None:
        if self.transport is not None:
            self.transport.abort() if self.busy else self.transport.close()

    # requests
    def process(self) -> None:
        while not self.busy and not self.closing and self.transport is not None:
            buf = self.buf
            if not buf:
                break
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.fastpath.max_header_size or _malformed(buf):
                    self.handoff()  # aiohttp answers it (400 or 431) as it would any such head
                    return
                break
            head = buf[:end]
            fastpath = self.fastpath
            request = fastpath.plans.get(head)
            if request is None:
                # Long heads go to aiohttp, whose parser enforces the per-field limits (400/431).
                request = self.parse(head) if end <= fastpath.max_header_size else None
                if request is None:
                    self.handoff()
                    return
                if request.plain and end <= PLAN_MAX_HEAD:
                    plans = fastpath.plans
                    if len(plans) >= PLAN_CACHE_SIZE:
                        plans.clear()
                    plans[head] = request
            self.buf = buf[end + 4:]
            self.deadline = self.loop.time() + fastpath.client_timeout_s
            started = time.perf_counter()
            if request.plain and self.answer_now(request, buf[:end + 4], started):
                continue
            self.handle(request, buf[:end + 4], started)
        if self.transport is None:
            return
        if self.busy:
            self._pace()
            return
        if self.closing or (self.eof and self.buf.find(b"\r\n\r\n") < 0):
            self.transport.close()
        elif self.paused:
            self.paused = False
            self.transport.resume_reading()

    def parse(self, head: bytes) -> Request | None:
        return parse_head(head, self.fastpath.targets)

    def answer_now(self, request: Request, raw: bytes, started: float) -> bool:
        """Answer a plain request for a public local file right here; False: take the full path.

        No coroutine, no task, no access-check call (its cached verdict is read instead), and
        the header and file go out with one ``sendmsg`` and one ``sendfile`` when the socket
        takes them, which it almost always does.
        """
        fastpath = self.fastpath
        now = time.monotonic()
        if not fastpath.open_access:
            cache = fastpath.access_cache
            verdict = cache.get(request.video_id) if cache is not None else None
            # Only a video known to be public: a private one needs the check, and an unknown one
            # (deleted, or never catalogued) must get the full path's 404 even while some tier
            # still holds its files.
            if verdict is None or verdict[1] != "public" or verdict[0] <= now:
                return False
        if fastpath.delivery.store is not None:  # s3 mode: no media tree here (edge/playback/delivery.py)
            return self.answer_pulled(request, raw, started)
        if request.absent_until > now:
            # Not on disk a moment ago: an edge serving from its hot tiers pays no failed open
            # per request. Safe to skip: a tier holds only what an origin had, and a miss there
            # sends the request to the full path, which looks on disk again.
            return self.answer_pulled(request, raw, started)
        local = request.local
        if local is None:
            video_dir = f"{fastpath.media_root}/{request.video_id}"
            local = request.local = (f"{video_dir}/{request.rel}", video_dir)
        entry = fastpath.files.get(local[0], request.rel, local[1])
        if entry is None:
            request.absent_until = now + fastpath.files.valid_s
            return self.answer_pulled(request, raw, started)
        if entry.body is None and entry.fd is None:
            return False  # a closed descriptor: the full path answers
        head = self.plain_head(request, entry)
        size = entry.size if request.is_get else 0
        body = entry.body
        if body is not None or not size:
            self.write_now(request, head, body, size, started)
            return True
        fd = entry.fd
        # No body and a size: the file's descriptor is open (checked above).
        assert fd is not None
        head_sent = 0
        try:
            head_sent = self._dup().sendmsg((head,), (), socket.MSG_MORE)
            if head_sent < len(head):
                entry.acquire()
                self.send(request, 200, [head[head_sent:]], fd, 0, size, entry, started)
                return True
            n = os.sendfile(self.sock_fd, fd, 0, size)
        except BlockingIOError:
            # The socket is full: the general writer waits for it and sends what did not go out
            # (the whole head, or only the file when sendmsg took the head before sendfile).
            entry.acquire()
            self.send(request, 200, [head[head_sent:]] if head_sent < len(head) else [], fd, 0, size,
                      entry, started)
            return True
        except OSError:
            self.abort()
            return True
        if n < size:
            if n == 0:  # the file is shorter than its recorded size
                self.abort()
                return True
            entry.acquire()
            self.send(request, 200, [], fd, n, size - n, entry, started)
            return True
        self.fastpath.metrics.observe(request.route, 200, size, time.perf_counter() - started)
        return True

    def plain_head(self, request: Request, entry: Servable) -> bytes:
        """The 200 head for a plain request (no range, no validator, no token)."""
        date = self.fastpath.date_line()
        tail = request.tail
        if request.http10:
            head = b"".join((_OK_LINE_10, date, entry.full_block, tail, b"\r\n"))
        elif tail or entry.fast_date is not date:
            head = b"".join((_OK_LINE, date, entry.full_block, tail, b"\r\n"))
            if not tail:
                entry.fast_head, entry.fast_date = head, date
        else:
            head = entry.fast_head
        if not request.keep_alive:
            self.closing = True
        return head

    def write_now(self, request: Request, head: bytes, body: bytes | None, size: int,
                  started: float) -> None:
        """A head and a small body with one ``writev``; the general writer sends what is left."""
        chunks = (head, body) if size and body is not None else (head,)
        try:
            n = os.writev(self.sock_fd, chunks)
        except BlockingIOError:
            n = 0
        except OSError:
            self.abort()
            return
        if n < len(head) + size:  # the socket is full: the general writer sends the rest
            rest = [head[n:]] if n < len(head) else []
            if size and body is not None:
                rest.append(body[max(0, n - len(head)):])
            self.send(request, 200, rest, None, 0, size, None, started)
            return
        self.fastpath.metrics.observe(request.route, 200, size, time.perf_counter() - started)

    def answer_pulled(self, request: Request, raw: bytes, started: float) -> bool:
        """A public file this edge does not hold: the memory tier now, Redis without a task.

        A Redis lookup joins the loop turn's MGET with a callback that answers the connection
        when the reply comes (one task per MGET, none per request). False: the full path
        answers (a 404, no Redis, a tier past it).
        """
        delivery = self.fastpath.delivery
        found = delivery.lookup_pulled(request.video_id, request.rel)
        if isinstance(found, Servable):
            self.answer_entry(request, found, started)
            return True
        redis = delivery.redis
        if found is None or redis is None:
            return False
        key = f"{request.video_id}/{request.rel}"
        self.busy = True

        def answered(record: HotRecord | None) -> None:
            transport = self.transport
            if self.closing or transport is None or transport.is_closing():  # lost while Redis answered
                return
            self.busy = False
            if record is None:
                # Not in Redis: the full path asks the tiers past it, without asking Redis again.
                self.handle(request, raw, started, past_redis=True)
            else:
                self.answer_entry(request, delivery.redis_hit(key, record), started)
            if not self.busy:
                self.process()

        redis.get_soon(key, answered)
        return True

    def answer_entry(self, request: Request, entry: Servable, started: float) -> None:
        """A tier's servable: a plain request for a body in memory gets the 200 as built, as
        answer_now writes a local file's; anything else the general answer."""
        if request.plain and entry.body is not None:
            self.write_now(request, self.plain_head(request, entry), entry.body,
                           entry.size if request.is_get else 0, started)
        else:
            self.respond(request, entry, started)

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def handle(self, request: Request, raw: bytes, started: float, past_redis: bool = False) -> None:
        # The access check is a coroutine that may await a store; its first step runs now and
        # a task is made only if it suspends (edge/fastpath/inline.py). A task is the connection's
        # (cancelled when it is lost); serve() answers every exception itself.
        self.busy = True
        self.inline = True
        try:
            task = inline.start(self.loop, self.serve(request, raw, started, past_redis), "fast-path request")
        finally:
            self.inline = False
        if task is not None:
            self.task = task

    async def serve(self, request: Request, raw: bytes, started: float, past_redis: bool = False) -> None:
        match_info = {"id": request.video_id, "path": request.rel}
        if request.token is not None:
            match_info["token"] = request.token
        view = PlaybackRequest(self.fastpath.app, METHODS[request.method], request.target,
                               request.head, match_info)
        try:
            # The view stands in for web.Request (see the module's docstring).
            await access.authorize_playback(cast(web.Request, view), request.video_id)
            found = self.fastpath.delivery.lookup_now(request.video_id, request.rel)
            if found is None:
                raise HTTPError(404, "not found", f"video {request.video_id} has no file {request.rel}")
            if not isinstance(found, Servable):  # REMOTE: the async tiers answer
                found = await self.fastpath.delivery.lookup_remote(request.video_id, request.rel, past_redis)
        except FastPathUnsupported:
            self.task = None
            self.busy = False
            self.replay(raw)
            return
        except HTTPError as exc:
            self.task = None
            self.busy = False
            self.error(request, exc, started)
        except Exception:
            log.exception("failed to answer %s", request.target.decode())
            self.task = None
            self.busy = False
            self.error(request, HTTPError(500, "internal error", "the edge failed to answer; see its log"),
                       started)
        else:
            self.task = None
            self.busy = False
            self.respond(request, found, started)
        if not self.busy and not self.inline:
            # Finished in a task: the next request starts from a loop callback, not this task.
            self.loop.call_soon(self.process)

    def respond(self, request: Request, entry: Servable, started: float) -> None:
        status = 200
        start, end = 0, entry.size
        lower = request.lower
        inm = header_value(request, b"\r\nif-none-match:") if b"\r\nif-none-match:" in lower else None
        if inm is not None and _etag_matches(inm.decode("latin-1"), entry.etag):
            status, block, end = 304, entry.head_block, 0
        elif b"\r\nrange:" in lower and (
                b"\r\nif-range:" not in lower
                or header_value(request, b"\r\nif-range:") == entry.etag.encode("latin-1")):
            try:
                wanted = parse_range((header_value(request, b"\r\nrange:") or b"").decode("latin-1"),
                                     entry.size)
            except RangeNotSatisfiable as exc:
                self.error(request, HTTPError(416, "range not satisfiable", str(exc),
                                              {"Content-Range": f"bytes */{entry.size}"}), started)
                return
            if wanted is None:  # ignored (RFC 9110 section 14.2): the whole body
                block = entry.full_block
            else:
                start, end = wanted
                status = 206
                block = entry.head_block + b"Content-Length: %d\r\nContent-Range: bytes %d-%d/%d\r\n" % (
                    end - start, start, end - 1, entry.size)
        else:
            block = entry.full_block
        if not request.keep_alive:
            self.closing = True
        head = b"".join((_status_line(status, request.http10), self.fastpath.date_line(), block,
                         request.tail, b"\r\n"))
        body = request.method == b"GET" and status != 304
        count = end - start if body else 0
        if entry.body is not None or count == 0:
            chunks = [head, entry.body[start:end]] if count and entry.body is not None else [head]
            self.send(request, status, chunks, None, 0, count, None, started)
        else:
            if entry.fd is None:  # evicted and closed under us: let the full path reopen it
                self.error(request, HTTPError(503, "file closed", "retry", {"Retry-After": "1"}), started)
                return
            entry.acquire()
            self.send(request, status, [head], entry.fd, start, count, entry, started)

    def send(self, request: Request, status: int, chunks: list[bytes], fd: int | None, offset: int,
             count: int, entry: Servable | None, started: float) -> None:
        self.entry = entry

        def done(exc: BaseException | None) -> None:
            self.write = None
            self._release()
            self.busy = False
            self.fastpath.metrics.observe(request.route, status, count, time.perf_counter() - started)
            if exc is not None:
                if self.transport is not None:
                    self.transport.abort()
                return
            self.process()

        if fd is not None:
            self._dup()  # a file's head goes with MSG_MORE; small bodies wait on a dup of their own
        write = DirectWrite(self.loop, self.sock_fd, chunks, fd, offset, count, done, self.wait_fd, self.sock)
        try:
            finished = write.start()
        except (OSError, EOFError):
            self._release()
            if self.transport is not None:
                self.transport.abort()
            self.closing = True
            return
        if finished:
            self._release()
            self.fastpath.metrics.observe(request.route, status, count, time.perf_counter() - started)
        else:
            self.write = write
            self.busy = True
            self.deadline = self.loop.time() + self.fastpath.write_timeout_s

    def error(self, request: Request, exc: HTTPError, started: float) -> None:
        body = json.dumps({"error": exc.error, "detail": exc.detail}).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in exc.headers.items()).encode("latin-1")
        cors = f"Access-Control-Allow-Origin: {self.fastpath.delivery.config.edge.cors_allow_origin}\r\n"
        tail = request.tail
        if not request.keep_alive:
            self.closing = True
        head = b"".join((_status_line(exc.status, request.http10), self.fastpath.date_line(),
                         b"Content-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
                         cors.encode(), extra, tail, b"\r\n"))
        chunks = [head, body] if request.method == b"GET" else [head]
        self.send(request, exc.status, chunks, None, 0, 0, None, started)

    def handoff(self) -> None:
        """Give the connection and its unparsed bytes to aiohttp."""
        self.replay(b"")

    def replay(self, raw: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        pending = raw + self.buf
        self.buf = b""
        self.transport = None
        if self.paused:
            self.paused = False
            transport.resume_reading()
        self._close_wait_fd()
        self.fastpath.connections.discard(self)
        self.fastpath.handoffs += 1
        protocol = self.fastpath.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if pending:
            protocol.data_received(pending)

    def _release(self) -> None:
        entry, self.entry = self.entry, None
        if entry is not None:
            entry.release()


_OK_LINE_10 = b"HTTP/1.0 200 OK\r\n"  # aiohttp answers in the request's version
_STATUS_LINES: dict[tuple[int, bool], bytes] = {}


def _status_line(status: int, http10: bool = False) -> bytes:
    line = _STATUS_LINES.get((status, http10))
    if line is None:
        line = _STATUS_LINES[status, http10] = b"HTTP/1.%d %d %s\r\n" % (
            0 if http10 else 1, status, _REASONS.get(status, b"Error"))
    return line


def _malformed(partial: bytes) -> bool:
    """An unfinished head with a NUL, a bare LF or a bare CR: no CRLF CRLF will make it valid."""
    if b"\x00" in partial:
        return True
    crlf = partial.count(b"\r\n")
    return partial.count(b"\n") != crlf or partial.rstrip(b"\r").count(b"\r") != crlf


def _etag_matches(if_none_match: str, etag: str) -> bool:
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))
