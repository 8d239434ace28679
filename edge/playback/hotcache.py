"""The hot-object tiers for files this edge does not hold: an in-process LRU and Redis.

Small objects (playlists, init segments; up to ``edge.hot_object_max_size``) pulled from an origin
are kept in this process's memory and in Redis, which every edge of the fleet shares, so one
edge's pull serves the others. Each copy lives for the object's own max-age (a growing playlist:
``edge.live_playlist_max_age``), capped at ``cache.hot_ttl``. Redis holds one key per object,
bounded by ``cache.redis_max_object_size`` and the TTL; the Redis server's ``maxmemory`` with an
LRU policy bounds the total.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from streamgate.common.redis_keys import RedisKeys
from streamgate.edge.playback.files import Servable
from streamgate.edge.playback.hotwire import MgetPipe

log = logging.getLogger("streamgate.edge.cache")



class HotRecord(msgspec.Struct, array_like=True, frozen=True):
    """One object as Redis stores it (msgpack)."""

    body: bytes
    etag: str
    content_type: str
    cache_control: str
    last_modified: str


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(HotRecord).decode


# Records decoded last by key, reused while Redis answers the same bytes (a playlist asked for
# again and again): the bytes are compared, not decoded, and the one record object lets the
# delivery reuse the servable built for it. Bounded like Delivery's servables.
DECODED_ENTRIES = 256
DECODED_MAX_BYTES = 16 * 1024
Decoded = dict[str, tuple[bytes, HotRecord]]


def _record(raw: bytes | None, key: str = "", decoded: Decoded | None = None) -> HotRecord | None:
    if raw is None:
        return None
    if decoded is not None:
        last = decoded.get(key)
        if last is not None and last[0] == raw:
            return last[1]
    try:
        record = _decode(raw)
    except msgspec.DecodeError:
        return None
    if decoded is not None and len(raw) <= DECODED_MAX_BYTES:
        if len(decoded) >= DECODED_ENTRIES:
            decoded.clear()
        decoded[key] = (raw, record)
    return record


# Who waits for a key: a future (a coroutine's await) or a plain callback (the fast path's,
# which answers a connection without a task of its own).
Waiter = asyncio.Future[HotRecord | None] | Callable[[HotRecord | None], None]


def _answer(batch: dict[str, list[Waiter]], keys: list[str], values: list[bytes | None],
            callbacks: bool = True, decoded: Decoded | None = None) -> None:
    for key, raw in zip(keys, values, strict=True):
        record = _record(raw, key, decoded)
        for waiter in batch[key]:
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_result(record)
                continue
            if not callbacks:
                continue
            try:
                waiter(record)
            except Exception:  # one connection's failure must not strand the rest of the batch
                log.exception("a hot-tier callback failed for %s", key)


def servable(key: str, record: HotRecord, ttl_s: float, cors: dict[str, str]) -> Servable:
    return Servable(key, len(record.body), record.etag, record.content_type, record.cache_control,
                    record.last_modified, cors, body=record.body,
                    expires_at=time.monotonic() + ttl_s)


class MemoryLRU:
    """Servables by key, bounded by the bytes of their bodies; expired entries count as misses."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.entries: OrderedDict[str, Servable] = OrderedDict()

    def get(self, key: str) -> Servable | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= time.monotonic():
            self.discard(key)
            return None
        self.entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: Servable) -> None:
        size = entry.size
        if size > self.max_bytes:
            return
        self.discard(key)
        self.entries[key] = entry
        self.used += size
        while self.used > self.max_bytes:
            self.discard(next(iter(self.entries)))

    def discard(self, key: str) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.used -= entry.size


class RedisTier:
    """The fleet-shared tier; a Redis failure is a miss (logged once per outage), never an error.

    Lookups made in the same loop turn go out as one MGET: one round trip and one pass through
    the client for a burst of requests, and concurrent lookups of one key share a reply.
    """

    def __init__(self, client: Any, max_object_size: int, max_ttl_s: float, prefix: str = RedisKeys().hot,
                 pipe: MgetPipe | None = None) -> None:
        self.client = client
        # Lookups go out on the pipe when it is connected (edge/playback/hotwire.py), else by the client.
        self.pipe = pipe
        self.prefix = prefix
        self.max_object_size = max_object_size
        self.max_ttl_s = max_ttl_s
        self._failing = False
        self._batch: dict[str, list[Waiter]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._decoded: Decoded = {}
        self.round_trips = 0

    async def get(self, key: str) -> HotRecord | None:
        loop = asyncio.get_running_loop()
        if self._batch is None:
            self._batch = {}
            loop.call_soon(self._send_batch)
        waiter: asyncio.Future[HotRecord | None] = loop.create_future()
        self._batch.setdefault(key, []).append(waiter)
        return await waiter

    def get_soon(self, key: str, callback: Callable[[HotRecord | None], None]) -> None:
        """Look ``key`` up in this turn's MGET; ``callback`` gets the record (None: a miss).

        Call from inside the running loop. The callback runs at most once, from a loop callback
        (no task running) after the MGET's reply; not at all if the MGET is cancelled (shutdown).
        """
        if self._batch is None:
            self._batch = {}
            asyncio.get_running_loop().call_soon(self._send_batch)
        self._batch.setdefault(key, []).append(callback)

    def _send_batch(self) -> None:
        batch, self._batch = self._batch or {}, None
        pipe = self.pipe
        if pipe is not None:
            keys = list(batch)
            loop = asyncio.get_running_loop()

            def answered(reply: Any) -> None:
                if isinstance(reply, list) and len(reply) == len(keys):
                    self._failing = False
                    _answer(batch, keys, reply, decoded=self._decoded)
                else:  # the pipe failed under this MGET: a miss, answered from a callback
                    misses: list[bytes | None] = [None] * len(keys)
                    loop.call_soon(_answer, batch, keys, misses)

            self.round_trips += 1
            if pipe.send([(self.prefix + key).encode() for key in keys], answered):
                return
            self.round_trips -= 1
            pipe.ensure()
        task = asyncio.get_running_loop().create_task(self._mget(batch), name="redis-hot-mget")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mget(self, batch: dict[str, list[Waiter]]) -> None:
        keys = list(batch)
        self.round_trips += 1
        try:
            values = await self.client.mget([self.prefix + key for key in keys])
        except BaseException as exc:  # redis down: serve from the next tier
            if isinstance(exc, Exception):
                self._failed(exc)
            values = [None] * len(keys)
            if not isinstance(exc, Exception):
                # Cancelled at shutdown: wake the awaiting coroutines, then go. The callbacks'
                # connections are being closed by the fast path's own shutdown.
                _answer(batch, keys, values, callbacks=False)
                raise
        else:
            self._failing = False
        # From a loop callback, not this task: a waiter's callback may start a request's
        # coroutine inline (edge/fastpath/inline.py), which needs no task to be running.
        asyncio.get_running_loop().call_soon(_answer, batch, keys, values, True, self._decoded)

    async def close(self) -> None:
        if self.pipe is not None:
            await self.pipe.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def put(self, key: str, record: HotRecord, ttl_s: float) -> bool:
        ttl_ms = int(min(ttl_s, self.max_ttl_s) * 1000)
        if len(record.body) > self.max_object_size or ttl_ms <= 0:
            return False
        try:
            await self.client.set(self.prefix + key, _encode(record), px=ttl_ms)
        except Exception as exc:
            self._failed(exc)
            return False
        return True

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            log.warning("redis hot tier unavailable, serving from other tiers: %s", exc)
        self._failing = True
