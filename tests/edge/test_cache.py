"""The hot tiers: the in-process LRU, the Redis tier shared by edges (real redis-server), open files."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest

VIDEO_ID = "vid-1"


def delivery_of(server):
    from streamgate.edge.playback.routes import DELIVERY

    return server.app[DELIVERY]


async def fetch(client: aiohttp.ClientSession, server, rel: str) -> tuple[int, bytes, dict[str, str]]:
    async with client.get(f"http://127.0.0.1:{server.port}/videos/{VIDEO_ID}/{rel}") as r:
        return r.status, await r.read(), dict(r.headers)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "aiohttp"])
async def test_one_edges_pull_serves_another_edge_from_redis(fast_path, tmp_path: Path, origin, redis_url: str,
                                                             media_template: Path, make_config, start_edge) -> None:
    import redis.asyncio as redis

    rel = "240p/index.m3u8"
    expected = (media_template / VIDEO_ID / rel).read_bytes()
    common = {"origin_url": origin.url, "fast_path": fast_path,
              "cache": {"redis_url": redis_url, "hot_ttl": 120}}
    # Edge B keeps nothing in its own memory, so every request asks Redis.
    config_a = make_config(tmp_path / "a", **common)
    config_b = make_config(tmp_path / "b", memory_cache_size=0, **common)
    async with start_edge(config_a) as a, start_edge(config_b) as b, aiohttp.ClientSession() as client:
        status, body, headers_a = await fetch(client, a, rel)
        assert (status, body) == (200, expected)
        assert origin.fetches[f"{VIDEO_ID}/{rel}"] == 1
        for _ in range(3):
            status, body, headers_b = await fetch(client, b, rel)
            assert (status, body) == (200, expected)
            assert headers_b.get("ETag") == headers_a.get("ETag"), (headers_a, headers_b)
            assert headers_b["Content-Type"] == "application/vnd.apple.mpegurl"
        assert origin.fetches[f"{VIDEO_ID}/{rel}"] == 1, "edge B must not pull what A put in Redis"
        assert not (tmp_path / "b" / "cache" / "media" / VIDEO_ID / rel).exists()
        client_r = redis.Redis.from_url(redis_url)
        try:
            ttl_ms = await client_r.pttl(f"sg:hot:{VIDEO_ID}/{rel}")
            # The origin said max-age=60, under cache.hot_ttl: the object lives 60 s.
            assert 0 < ttl_ms <= 60_000
            # Segments above cache.redis_max_object_size stay out of Redis.
            status, _, _ = await fetch(client, a, "240p/90.m4s")
            assert status == 200
            assert await client_r.exists(f"sg:hot:{VIDEO_ID}/240p/90.m4s") == 0
        finally:
            await client_r.aclose()


async def test_redis_down_is_a_miss_not_an_error(tmp_path: Path) -> None:
    import redis.asyncio as redis

    from streamgate.edge.playback.hotcache import HotRecord, RedisTier

    client = redis.Redis.from_url(f"unix://{tmp_path}/no-such-redis.sock")
    try:
        tier = RedisTier(client, max_object_size=1024, max_ttl_s=60)
        assert await tier.get("v/master.m3u8") is None
        assert await tier.put("v/master.m3u8", HotRecord(b"#EXTM3U", '"e"', "x", "y", "z"), 10) is False
    finally:
        await client.aclose()


def test_memory_lru_is_bounded_by_bytes_and_expires() -> None:
    import time

    from streamgate.edge.playback.files import Servable
    from streamgate.edge.playback.hotcache import MemoryLRU

    lru = MemoryLRU(max_bytes=250)

    def item(key: str, size: int, ttl: float = 60) -> Servable:
        return Servable(key, size, '"e"', "video/mp4", "x", "", {}, body=b"x" * size,
                        expires_at=time.monotonic() + ttl)

    for key in "abc":
        lru.put(key, item(key, 100))
    assert lru.get("a") is None and lru.get("b") is not None and lru.get("c") is not None
    assert lru.used == 200
    assert lru.get("b") is not None  # "b" used after "c": "c" is now the oldest
    lru.put("d", item("d", 100))
    assert lru.get("c") is None and lru.get("b") is not None
    lru.put("big", item("big", 1000))
    assert lru.get("big") is None
    lru.put("gone", item("gone", 10, ttl=-1))
    assert lru.get("gone") is None


def test_open_file_cache_reuses_fds_and_sees_renames(tmp_path: Path, make_config) -> None:
    from streamgate.edge.playback.files import OpenFileCache

    config = make_config(tmp_path, open_file_cache_valid=0, memory_serve_max_size=10, open_file_cache_entries=2)
    cache = OpenFileCache(config.edge)
    seg = tmp_path / "1.m4s"
    seg.write_bytes(b"a" * 100)
    first = cache.get(str(seg), "v/1.m4s", None)
    assert first is not None and first.fd is not None and first.body is None
    again = cache.get(str(seg), "v/1.m4s", None)
    assert again is first and cache.hits == 1
    fresh = tmp_path / ".1.m4s.tmp"
    fresh.write_bytes(b"b" * 120)
    os.replace(fresh, seg)  # the pipeline publishes by rename
    replaced = cache.get(str(seg), "v/1.m4s", None)
    assert replaced is not first and replaced.size == 120 and replaced.etag != first.etag
    assert first.fd is None, "the replaced entry's descriptor is closed"
    # The bound on entries closes the oldest descriptors, but not one still being sent.
    replaced.acquire()
    for name in ("2.m4s", "3.m4s"):
        (tmp_path / name).write_bytes(b"c" * 50)
        assert cache.get(str(tmp_path / name), f"v/{name}", None) is not None
    assert len(cache.entries) == 2 and replaced.evicted and replaced.fd is not None
    replaced.release()
    assert replaced.fd is None
    assert cache.get(str(tmp_path / "missing.m4s"), "v/missing.m4s", None) is None


async def test_redis_lookups_of_one_loop_turn_share_one_round_trip(redis_url: str) -> None:
    import asyncio

    import redis.asyncio as redis

    from streamgate.edge.playback.hotcache import HotRecord, RedisTier

    client = redis.Redis.from_url(redis_url)
    try:
        tier = RedisTier(client, max_object_size=1024, max_ttl_s=60)
        records = {f"v/{i}.m3u8": HotRecord(f"#EXTM3U {i}".encode(), f'"{i}"', "x", "y", "z") for i in range(3)}
        for key, record in records.items():
            assert await tier.put(key, record, 30)
        before = tier.round_trips
        keys = [f"v/{i % 4}.m3u8" for i in range(30)]  # v/3 is absent
        answers = await asyncio.gather(*(tier.get(key) for key in keys))
        assert tier.round_trips - before == 1
        assert answers == [records.get(key) for key in keys]
    finally:
        await client.aclose()
