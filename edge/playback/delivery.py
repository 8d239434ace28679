"""Where a playback file comes from: the media tree, then the hot tiers, the disk cache, an origin.

Order for ``<id>/<rel>``:
1. the local media tree (open-file cache: fd + stat + prebuilt headers, small bodies in memory);
2. the in-process LRU of pulled hot objects;
3. Redis (shared by the fleet's edges);
4. the bounded local disk cache of pulled files;
5. an origin peer, with concurrent misses coalesced into one fetch; with ``storage.backend: s3``
   the object store instead (edge/playback/storepull.py), and step 1 is skipped: a fleet's media
   is in the store, the host's data dir holds only its cache.
Steps 1, 2 and a fresh 4 are synchronous, which is what the fast path serves without a task.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from streamgate.common.config import Config
from streamgate.common.storage import ObjectStore, StorageError, StorageUnavailable
from streamgate.edge.errors import HTTPError
from streamgate.edge.metrics import edge_metrics
from streamgate.edge.playback import names as media
from streamgate.edge.playback.diskcache import DiskCache
from streamgate.edge.playback.files import OpenFileCache, Servable
from streamgate.edge.playback.hotcache import HotRecord, MemoryLRU, RedisTier, servable
from streamgate.edge.playback.hotwire import MgetPipe, connection_params
from streamgate.edge.playback.origin import (
    NotAtOrigin,
    OriginPuller,
    OriginResolver,
    OriginUnavailable,
    StaticOrigins,
)
from streamgate.edge.playback.storepull import StorePuller, master_uris

# The servables kept for Redis records (see Delivery.redis_hit): playlists and init segments.
REDIS_SERVABLES = 256
REDIS_SERVABLE_MAX_BYTES = 16 * 1024


class _Remote:
    """Sentinel: the file is not local; the async tiers must be asked."""


REMOTE = _Remote()


def not_found(video_id: str, rel: str) -> HTTPError:
    return HTTPError(404, "not found", f"video {video_id} has no file {rel}")


class Delivery:
    def __init__(self, config: Config, redis_client: Any, resolver: OriginResolver,
                 store: ObjectStore | None = None) -> None:
        edge = config.edge
        self.config = config
        self.media_root = str(config.storage.media_dir)
        self.files = OpenFileCache(edge)
        self.memory = MemoryLRU(int(edge.memory_cache_size))
        self.hot_ttl_s = float(config.cache.hot_ttl)
        self.redis = None
        if redis_client is not None:
            params = connection_params(redis_client)
            self.redis = RedisTier(redis_client, int(config.cache.redis_max_object_size), self.hot_ttl_s,
                                   config.redis_keys.hot, MgetPipe(params) if params is not None else None)
        self.disk = DiskCache(config.storage.cache_dir / "media", int(edge.disk_cache_size))
        self.resolver = resolver
        self.store = store
        self.puller: OriginPuller | StorePuller
        if store is not None:
            self.puller = StorePuller(store, self.disk, int(edge.hot_object_max_size), edge,
                                      self._master_ended)
        else:
            self.puller = OriginPuller(resolver, self.disk, float(edge.origin_timeout),
                                       int(edge.hot_object_max_size), float(edge.vod_playlist_max_age))
        self.metrics = edge_metrics()
        self._redis_servables: dict[str, tuple[HotRecord, Servable, float]] = {}

    @property
    def remote_enabled(self) -> bool:
        if self.store is not None:
            return True
        return (self.redis is not None or not isinstance(self.resolver, StaticOrigins)
                or bool(self.resolver.urls))

    def lookup_now(self, video_id: str, rel: str) -> Servable | _Remote | None:
        """What can be answered without waiting: a servable, ``REMOTE``, or None (404)."""
        if self.store is None:
            video_dir = f"{self.media_root}/{video_id}"
            entry = self.files.get(f"{video_dir}/{rel}", rel, video_dir)
            if entry is not None:
                return entry
        return self.lookup_pulled(video_id, rel)

    def lookup_pulled(self, video_id: str, rel: str) -> Servable | _Remote | None:
        """``lookup_now`` past the media tree (the fast path has just missed it there)."""
        if not self.remote_enabled:
            return None
        key = f"{video_id}/{rel}"
        hot = self.memory.get(key)
        if hot is not None:
            self.metrics.tier("memory", "hit")
            return hot
        self.metrics.tier("memory", "miss")
        if self.redis is None:
            # Without Redis the disk cache is the next tier and is synchronous too.
            return self._from_disk(key, rel) or REMOTE
        return REMOTE

    async def lookup(self, video_id: str, rel: str) -> Servable:
        found = self.lookup_now(video_id, rel)
        if found is None:
            raise not_found(video_id, rel)
        if isinstance(found, Servable):
            return found
        return await self.lookup_remote(video_id, rel)

    def redis_hit(self, key: str, record: HotRecord) -> Servable:
        """A Redis record as a servable, kept in the memory tier for its max-age.

        The servable made for the record Redis gave last time is reused when Redis gives the
        same record again: its headers are already built. Redis still answers every request
        (it stays the tier that says what is current); only small objects are kept, so the
        bound is REDIS_SERVABLES x REDIS_SERVABLE_MAX_BYTES.
        """
        self.metrics.tier("redis", "hit")
        last = self._redis_servables.get(key)
        # The tier hands back the same record object for the same bytes (hotcache._record).
        if last is not None and (last[0] is record or last[0] == record):
            hit, ttl = last[1], last[2]
            hit.expires_at = time.monotonic() + ttl
        else:
            ttl = self._ttl(record.cache_control)
            hit = servable(key, record, ttl, self.files.cors)
            if len(record.body) <= REDIS_SERVABLE_MAX_BYTES:
                if len(self._redis_servables) >= REDIS_SERVABLES:
                    self._redis_servables.clear()
                self._redis_servables[key] = (record, hit, ttl)
        self.memory.put(key, hit)
        return hit

    async def lookup_remote(self, video_id: str, rel: str, past_redis: bool = False) -> Servable:
        """The async tiers; ``past_redis``: Redis has just said it lacks the object."""
        key = f"{video_id}/{rel}"
        if self.redis is not None:
            record = None if past_redis else await self.redis.get(key)
            if record is not None:
                return self.redis_hit(key, record)
            self.metrics.tier("redis", "miss")
            entry = self._from_disk(key, rel)
            if entry is not None:
                return entry
        try:
            pulled = await self.puller.pull(key)
        except NotAtOrigin:
            self.metrics.tier("origin", "miss")
            raise not_found(video_id, rel) from None
        except OriginUnavailable as exc:
            self.metrics.tier("origin", "error")
            raise HTTPError(502, "origin unavailable", str(exc)) from None
        except StorageUnavailable as exc:
            # What the tiers above hold is still served; this one object waits for the store.
            self.metrics.tier("origin", "error")
            raise HTTPError(503, "storage unavailable", str(exc),
                            {"Retry-After": str(exc.retry_after)}) from None
        except StorageError as exc:
            self.metrics.tier("origin", "error")
            raise HTTPError(502, "storage error", str(exc)) from None
        self.metrics.tier("origin", "hit")
        meta = pulled.meta
        if pulled.body is not None:
            record = HotRecord(pulled.body, meta.etag, meta.content_type, meta.cache_control,
                               meta.last_modified)
            ttl = self._ttl(meta.cache_control)
            pulled_entry = servable(key, record, ttl, self.files.cors)
            self.memory.put(key, pulled_entry)
            if self.redis is not None:
                await self.redis.put(key, record, ttl)
            return pulled_entry
        entry = self.files.get(str(self.disk.path(key)), rel, None,
                               meta=(meta.etag, meta.cache_control, meta.content_type))
        if entry is None:  # evicted between the write and now: a tiny bound; answer anyway
            raise HTTPError(503, "cache full", "the disk cache evicted the file while serving it",
                            {"Retry-After": "1"})
        return entry

    def _from_disk(self, key: str, rel: str) -> Servable | None:
        meta = self.disk.lookup(key)
        if meta is None:
            self.metrics.tier("disk", "miss")
            return None
        entry = self.files.get(str(self.disk.path(key)), rel, None,
                               meta=(meta.etag, meta.cache_control, meta.content_type))
        self.metrics.tier("disk", "hit" if entry is not None else "miss")
        return entry

    async def _master_ended(self, video_id: str, master: bytes) -> bool:
        """Whether every media playlist a master names carries EXT-X-ENDLIST (s3 mode)."""
        uris = master_uris(master)
        for uri in uris:
            try:
                _, rel = media.parse_media_path(video_id, uri)
                entry = await self.lookup(video_id, rel)
            except (HTTPError, media.BadMediaPath):
                return False
            if entry.body is None or b"#EXT-X-ENDLIST" not in entry.body:
                return False
        return bool(uris)

    def _ttl(self, cache_control: str) -> float:
        return min(self.hot_ttl_s, media.max_age_of(cache_control) or self.hot_ttl_s)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.close()
        await self.puller.close()
        self.files.close()
        await asyncio.sleep(0)
