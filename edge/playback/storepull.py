"""The object-store tier of a fleet (``storage.backend: s3``): a miss fetched from the store.

A file ``<id>/<rel>`` that no local tier holds is read from ``layout.media_key(id, rel)`` into the
disk cache, concurrent misses of one key sharing one GET (:class:`CoalescingPuller`, the same
coalescing origin pull uses). In s3 mode this replaces edge-to-edge origin pull: every edge reads
the one store, so no edge needs another's disk.

Headers are what a local file gets: the object's ETag, segments immutable, playlists the short
live max-age while the video grows and the VOD one once it has ended. A master playlist never
says whether it has ended; its media playlists do, and they are looked up through the same tiers
(the player asks for them next anyway). The disk cache keeps an entry for its max-age, so a live
playlist is fetched again after its few seconds while a segment is fetched once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable

from streamgate.common import layout
from streamgate.common.config import EdgeConfig
from streamgate.common.storage import ObjectNotFound, ObjectStore
from streamgate.edge.playback import names as media
from streamgate.edge.playback.diskcache import CacheMeta, DiskCache
from streamgate.edge.playback.origin import CoalescingPuller, NotAtOrigin, OriginUnavailable, Pulled

# (video id, master playlist body) -> whether every media playlist it names has ended.
EndedCheck = Callable[[str, bytes], Awaitable[bool]]

# Big reads: fewer trips through the event loop on a cold miss, the one path a player waits on.
CHUNK = 1024 * 1024

_URI_ATTR = re.compile(rb'URI="([^"]+)"')


def master_uris(master: bytes) -> list[str]:
    """The media playlists a master names (``URI="..."`` attributes and plain URI lines)."""
    uris: list[bytes] = _URI_ATTR.findall(master)
    uris += [line.strip() for line in master.splitlines() if line.strip() and not line.startswith(b"#")]
    return [u.decode("utf-8", "replace") for u in uris]


def http_etag(etag: str) -> str:
    return etag if etag.startswith('"') or etag.startswith("W/") else f'"{etag}"'


class StorePuller(CoalescingPuller):
    def __init__(self, store: ObjectStore, disk: DiskCache, hot_max: int, edge: EdgeConfig,
                 master_ended: EndedCheck) -> None:
        super().__init__(disk, hot_max)
        self.store = store
        self.edge = edge
        self.master_ended = master_ended

    async def _download(self, key: str) -> Pulled:
        video_id, rel = key.split("/", 1)
        self.upstream_fetches += 1
        try:
            stream = await self.store.open_read(layout.media_key(video_id, rel), chunk_size=CHUNK)
        except ObjectNotFound:
            self.remember_missing(key)
            raise NotAtOrigin(f"{key} is not in the object store") from None
        playlist = media.is_playlist(rel)
        temp = self.disk.temp_path(key)
        size = 0
        head = bytearray()
        try:
            async with stream:
                info = stream.info
                with open(temp, "wb") as out:  # noqa: ASYNC230 - local disk, page cache
                    async for chunk in stream:
                        out.write(chunk)
                        size += len(chunk)
                        if playlist or len(head) <= self.hot_max:
                            head += chunk
            if size != info.size:
                raise OriginUnavailable(f"{key}: the store sent {size} of {info.size} bytes")
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        body = bytes(head) if playlist or size <= self.hot_max else None
        live = False
        if playlist and body is not None:
            if rel.endswith(".m3u8") and media.is_master(body):
                live = not await self.master_ended(video_id, body)
            else:
                live = media.playlist_is_live(rel, body, None)
        cache_control = media.cache_control(rel, live, self.edge)
        meta = CacheMeta(etag=http_etag(info.etag), cache_control=cache_control,
                         content_type=media.content_type(rel),
                         last_modified=media.http_date(info.mtime or time.time()), size=size,
                         fetched_at=time.time(), max_age_s=media.max_age_of(cache_control))
        self.disk.commit(key, temp, meta)
        return Pulled(key, meta, body if body is not None and size <= self.hot_max else None)
