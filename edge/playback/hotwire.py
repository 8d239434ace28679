"""A pipelined MGET connection to Redis for the hot tier, answered from its protocol callback.

redis-py's asyncio client costs a task and a pool checkout per command and lets one MGET wait for
the previous one's reply; for a 1 KiB playlist that overhead is most of the request. Here one
connection per process writes each loop turn's lookups as one MGET, keeps several MGETs in flight
(Redis answers in order), and hands each reply to its waiters straight from ``data_received``,
parsed by hiredis (a dependency of ``redis[hiredis]``): no task, no coroutine per lookup.

It takes the connection parameters of the app's redis-py client (host/port or unix socket,
username/password, db). A TLS client, or a connection that cannot be made or fails, leaves the
lookups to the client (hotcache.RedisTier), which stays the path for everything else.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis

log = logging.getLogger("streamgate.edge.cache")

# Seconds between attempts to (re)connect after a failure; lookups use the client meanwhile.
RECONNECT_INTERVAL_S = 1.0

# A command's reply as hiredis parses it (an MGET's: a list; an error: hiredis.ReplyError), or
# None when the connection failed before it came.
Answer = Callable[[Any], None]


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def connection_params(client: Any) -> dict[str, Any] | None:
    """What to connect to, from a redis-py client; None when this module cannot speak to it."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if not isinstance(kwargs, dict) or "ssl" in getattr(getattr(pool, "connection_class", None), "__name__", "").lower():
        return None
    if kwargs.get("path"):
        return {"path": kwargs["path"], "username": kwargs.get("username"),
                "password": kwargs.get("password"), "db": int(kwargs.get("db") or 0)}
    return {"host": kwargs.get("host", "localhost"), "port": int(kwargs.get("port", 6379)),
            "username": kwargs.get("username"), "password": kwargs.get("password"),
            "db": int(kwargs.get("db") or 0)}


class _Wire(asyncio.Protocol):
    def __init__(self, pipe: MgetPipe) -> None:
        self.pipe = pipe
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        pending = self.pipe.pending
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.pipe.lost(exc)
                return
            if reply is False:
                return
            answer = pending.popleft() if pending else None
            if answer is not None:
                answer(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pipe.lost(exc)


class MgetPipe:
    """One process's pipelined connection; ``send`` is usable once ``ready``."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.wire: _Wire | None = None
        self.ready = False
        self.pending: deque[Answer | None] = deque()
        self._connecting: asyncio.Task[None] | None = None
        self._next_attempt = 0.0
        self._closed = False

    def ensure(self) -> None:
        """Start connecting in the background unless connected, connecting or waiting to retry."""
        if self.ready or self._connecting is not None or self._closed:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_attempt:
            return
        self._next_attempt = loop.time() + RECONNECT_INTERVAL_S
        self._connecting = loop.create_task(self._connect(), name="redis-hot-pipe")
        self._connecting.add_done_callback(self._connected)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        p = self.params
        if "path" in p:
            _, wire = await loop.create_unix_connection(lambda: _Wire(self), p["path"])
        else:
            _, wire = await loop.create_connection(lambda: _Wire(self), p["host"], p["port"])
        assert wire.transport is not None
        setup = []
        if p.get("password"):
            auth = [p["username"].encode(), p["password"].encode()] if p.get("username") else [p["password"].encode()]
            setup.append(_command(b"AUTH", *auth))
        if p.get("db"):
            setup.append(_command(b"SELECT", str(p["db"]).encode()))
        setup.append(_command(b"PING"))
        done: asyncio.Future[None] = loop.create_future()
        replies: list[Any] = []

        def one(reply: Any) -> None:
            replies.append(reply)
            if len(replies) == len(setup) and not done.done():
                done.set_result(None)

        self.wire = wire
        for _ in setup:
            self.pending.append(one)
        wire.transport.write(b"".join(setup))
        async with asyncio.timeout(5):
            await done
        refused = [r for r in replies if r is None or isinstance(r, Exception)]
        if refused:  # AUTH or SELECT refused, or the connection closed: the client stays the path
            raise ConnectionError(f"redis refused the hot-tier connection's setup: {refused[0]}")

    def _connected(self, task: asyncio.Task[None]) -> None:
        self._connecting = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.warning("redis hot-tier pipe unavailable, using the client: %s", exc)
            self._drop()
            return
        self.ready = True

    def send(self, keys: list[bytes], answer: Answer) -> bool:
        """Write one MGET; False: not connected (the caller uses the client)."""
        wire = self.wire
        if not self.ready or wire is None or wire.transport is None:
            return False
        self.pending.append(answer)
        wire.transport.write(_command(b"MGET", *keys))
        return True

    def lost(self, exc: BaseException | None) -> None:
        if self.ready or self.wire is not None:
            log.warning("redis hot-tier pipe lost: %s", exc or "closed")
        self._drop()

    def _drop(self) -> None:
        self.ready = False
        wire, self.wire = self.wire, None
        if wire is not None and wire.transport is not None:
            wire.transport.abort()
        pending, self.pending = self.pending, deque()
        for answer in pending:
            if answer is not None:
                answer(None)

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        self._drop()
