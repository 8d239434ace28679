"""Origin pull: an edge that lacks a file fetches it from an origin peer, once per file at a time.

Many concurrent misses for one file share a single upstream request (request coalescing): the
first miss starts a fetch task and every later miss awaits the same future. The fetch runs in its
own task so a client that disconnects does not cancel the download others wait for.

Where the origins are is behind :class:`OriginResolver`, a seam: ``edge.origin_url`` (or
``registry.static_origins``), or with ``registry.type: consul`` the passing edges tagged
``origin`` (:class:`DiscoveredOrigins`, static config as the fallback), set as
``app[ORIGIN_RESOLVER]`` by edge/playback/routes.py.

The coalescing is :class:`CoalescingPuller`, shared with the object-store tier of a fleet on
``storage.backend: s3`` (edge/playback/storepull.py), which replaces origin pull there: origin pull
stays for disk-backend fleets whose edges pull from an origin peer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

import aiohttp

from streamgate.edge.playback import names as media
from streamgate.edge.playback.diskcache import CacheMeta, DiskCache

log = logging.getLogger("streamgate.edge.playback.origin")

MISSING_TTL_S = 2.0
MISSING_MAX = 10_000


class OriginResolver(Protocol):
    async def origins(self) -> list[str]:
        """Base URLs (``http://host:port``) of origins to try, best first."""
        ...


class StaticOrigins:
    def __init__(self, urls: list[str]) -> None:
        self.urls = [u.rstrip("/") for u in urls if u]

    async def origins(self) -> list[str]:
        return self.urls


class DiscoveredOrigins:
    """Origins from common/consul/discovery.py ``Discovery.origins()`` (a live Consul watch); the
    Discovery is owned and closed by whoever made it."""

    def __init__(self, discovery: OriginResolver) -> None:
        self.discovery = discovery

    async def origins(self) -> list[str]:
        return [u.rstrip("/") for u in await self.discovery.origins() if u]


class NotAtOrigin(Exception):
    """Every origin answered that the file does not exist."""


class OriginUnavailable(Exception):
    """No origin could be reached or answered sensibly."""


class Pulled:
    """A file now in the disk cache; small ones also carry their bytes for the hot tiers."""

    __slots__ = ("key", "meta", "body")

    def __init__(self, key: str, meta: CacheMeta, body: bytes | None) -> None:
        self.key = key
        self.meta = meta
        self.body = body


class CoalescingPuller:
    """One fetch per key at a time into the disk cache; subclasses say how (``_download``)."""

    def __init__(self, disk: DiskCache, hot_max: int) -> None:
        self.disk = disk
        self.hot_max = hot_max
        self.inflight: dict[str, asyncio.Future[Pulled]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.upstream_fetches = 0
        self.coalesced = 0
        # Files every origin said do not exist, until when (monotonic): a player polling a
        # missing name costs the origins one request per MISSING_TTL_S, not one per poll.
        self.missing: dict[str, float] = {}

    async def pull(self, key: str) -> Pulled:
        """The file ``<id>/<rel>`` fetched into the disk cache (coalesced with concurrent pulls)."""
        gone_until = self.missing.get(key)
        if gone_until is not None:
            if gone_until > time.monotonic():
                raise NotAtOrigin(f"{key} is not at any origin (cached answer)")
            del self.missing[key]
        future = self.inflight.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self.inflight[key] = future
            task = asyncio.create_task(self._fetch(key, future), name=f"origin-pull {key}")
            self.tasks.add(task)
            task.add_done_callback(self._reap)
        else:
            self.coalesced += 1
        return await asyncio.shield(future)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("origin pull task failed", exc_info=task.exception())

    async def _fetch(self, key: str, future: asyncio.Future[Pulled]) -> None:
        try:
            result = await self._download(key)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc if isinstance(exc, Exception) else OriginUnavailable(str(exc)))
                future.exception()  # retrieved here: waiters may all have gone
            if not isinstance(exc, Exception):
                raise
        else:
            future.set_result(result)
        finally:
            self.inflight.pop(key, None)

    async def _download(self, key: str) -> Pulled:
        raise NotImplementedError

    def remember_missing(self, key: str) -> None:
        if len(self.missing) >= MISSING_MAX:
            self.missing.clear()
        self.missing[key] = time.monotonic() + MISSING_TTL_S

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class OriginPuller(CoalescingPuller):
    def __init__(self, resolver: OriginResolver, disk: DiskCache, timeout_s: float,
                 hot_max: int, vod_max_age_s: float) -> None:
        super().__init__(disk, hot_max)
        self.resolver = resolver
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.vod_max_age_s = vod_max_age_s
        self.session: aiohttp.ClientSession | None = None

    async def _download(self, key: str) -> Pulled:
        origins = await self.resolver.origins()
        if not origins:
            raise NotAtOrigin("no origin configured")
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=self.timeout, auto_decompress=False)
        last_error = "no origin answered"
        not_found = 0
        for base in origins:
            url = f"{base}/videos/{key}"
            self.upstream_fetches += 1
            try:
                async with self.session.get(url) as response:
                    if response.status == 404:
                        not_found += 1
                        continue
                    if response.status != 200:
                        last_error = f"{base}: HTTP {response.status}"
                        continue
                    return await self._store(key, response)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last_error = f"{base}: {type(exc).__name__}: {exc}"
                log.warning("origin pull of %s failed at %s: %s", key, base, exc)
        if not_found == len(origins):
            self.remember_missing(key)
            raise NotAtOrigin(f"{key} is not at any origin")
        raise OriginUnavailable(last_error)

    async def _store(self, key: str, response: aiohttp.ClientResponse) -> Pulled:
        rel = key.split("/", 1)[1]
        temp = self.disk.temp_path(key)
        size = 0
        head = bytearray()
        try:
            with open(temp, "wb") as out:  # noqa: ASYNC230 - local disk, page cache
                async for chunk in response.content.iter_chunked(256 * 1024):
                    out.write(chunk)  # page cache write; a local disk does not stall the loop
                    size += len(chunk)
                    if len(head) <= self.hot_max:
                        head += chunk
            expected = response.content_length
            if expected is not None and expected != size:
                raise OriginUnavailable(f"{key}: origin sent {size} of {expected} bytes")
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        body = bytes(head) if size <= self.hot_max else None
        cache_control = response.headers.get("Cache-Control") or media.cache_control_default(
            rel, self.vod_max_age_s)
        meta = CacheMeta(
            etag=response.headers.get("ETag") or media.make_etag(size, time.time_ns()),
            cache_control=cache_control,
            content_type=media.content_type(rel),
            last_modified=response.headers.get("Last-Modified") or media.http_date(time.time()),
            size=size,
            fetched_at=time.time(),
            max_age_s=media.max_age_of(cache_control),
        )
        self.disk.commit(key, temp, meta)
        return Pulled(key, meta, body)

    async def close(self) -> None:
        await super().close()
        if self.session is not None:
            await self.session.close()
