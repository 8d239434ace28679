"""The hot-object tiers for files this edge does not hold: an in-process LRU and Redis.

Small objects (playlists, init segments; up to ``edge.hot_object_max_size``) pulled from an origin
are kept in this process's memory and in Redis, which every edge of the fleet shares, so one
edge's pull serves the others. Each copy lives for the object's own max-age (a growing playlist:
``edge.live_playlist_max_age``), capped at ``cache.hot_ttl``. Redis holds one key per object,
bounded by ``cache.redis_max_object_size`` and the TTL; the Redis server's ``maxmemory`` with an
LRU policy bounds the total.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import msgspec

from .files import Servable

log = logging.getLogger("streamgate.edge.cache")

REDIS_PREFIX = "streamgate:hot:"


class HotRecord(msgspec.Struct, array_like=True, frozen=True):
    """One object as Redis stores it (msgpack)."""

    body: bytes
    etag: str
    content_type: str
    cache_control: str
    last_modified: str


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(HotRecord).decode


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
    """The fleet-shared tier; a Redis failure is a miss (logged once per outage), never an error."""

    def __init__(self, client: Any, max_object_size: int, max_ttl_s: float) -> None:
        self.client = client
        self.max_object_size = max_object_size
        self.max_ttl_s = max_ttl_s
        self._failing = False

    async def get(self, key: str) -> HotRecord | None:
        try:
            raw = await self.client.get(REDIS_PREFIX + key)
        except Exception as exc:  # redis down: serve from the next tier
            self._failed(exc)
            return None
        self._failing = False
        if raw is None:
            return None
        try:
            return _decode(raw)
        except msgspec.DecodeError:
            return None

    async def put(self, key: str, record: HotRecord, ttl_s: float) -> bool:
        ttl_ms = int(min(ttl_s, self.max_ttl_s) * 1000)
        if len(record.body) > self.max_object_size or ttl_ms <= 0:
            return False
        try:
            await self.client.set(REDIS_PREFIX + key, _encode(record), px=ttl_ms)
        except Exception as exc:
            self._failed(exc)
            return False
        return True

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            log.warning("redis hot tier unavailable, serving from other tiers: %s", exc)
        self._failing = True
