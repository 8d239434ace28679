"""Origin pull: coalescing at a real upstream aiohttp server, errors, and the disk cache after."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from support import async_wait_until

VIDEO_ID = "vid-1"
FAST = pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "aiohttp"])


def delivery_of(server):
    from streamgate.edge.playback.routes import DELIVERY

    return server.app[DELIVERY]


@FAST
@pytest.mark.parametrize("rel", ["240p/90.m4s", "240p/index.m3u8"], ids=["segment", "playlist"])
async def test_concurrent_misses_make_one_upstream_fetch(fast_path, rel, tmp_path: Path, origin,
                                                         media_template: Path, make_config, start_edge) -> None:
    expected = (media_template / VIDEO_ID / rel).read_bytes()
    origin.gate.clear()  # hold the upstream answer until every miss is waiting on it
    config = make_config(tmp_path / "data", origin_url=origin.url, fast_path=fast_path)
    n = 20
    async with start_edge(config) as server, aiohttp.ClientSession() as client:
        puller = delivery_of(server).puller
        target = f"http://127.0.0.1:{server.port}/videos/{VIDEO_ID}/{rel}"

        async def get() -> tuple[int, bytes]:
            async with client.get(target) as r:
                return r.status, await r.read()

        requests = [asyncio.create_task(get()) for _ in range(n)]

        async def lined_up() -> bool:
            return puller.coalesced == n - 1 and origin.waiting == 1

        await async_wait_until(lined_up, what=f"{n} misses waiting on one upstream fetch")
        origin.gate.set()
        answers = await asyncio.gather(*requests)
        assert answers == [(200, expected)] * n
        assert origin.fetches[f"{VIDEO_ID}/{rel}"] == 1
        # Served from this edge's tiers from now on.
        status, body = await get()
        assert (status, body) == (200, expected)
        assert origin.fetches[f"{VIDEO_ID}/{rel}"] == 1
        assert (tmp_path / "data" / "cache" / "media" / VIDEO_ID / rel).read_bytes() == expected


async def test_origin_answers_map_to_edge_statuses(tmp_path: Path, origin, make_config, start_edge) -> None:
    config = make_config(tmp_path / "data", origin_url=origin.url)
    async with start_edge(config) as server, aiohttp.ClientSession() as client:
        base = f"http://127.0.0.1:{server.port}/videos"
        for _ in range(3):
            async with client.get(f"{base}/{VIDEO_ID}/240p/777.m4s") as r:
                assert r.status == 404
                assert (await r.json())["error"] == "not found"
        assert origin.fetches[f"{VIDEO_ID}/240p/777.m4s"] == 1, "a missing file is remembered briefly"
        origin.fail_with = 500
        async with client.get(f"{base}/{VIDEO_ID}/240p/1.m4s") as r:
            assert r.status == 502
            assert "HTTP 500" in (await r.json())["detail"]
        origin.fail_with = None
        async with client.get(f"{base}/{VIDEO_ID}/240p/1.m4s") as r:
            assert r.status == 200  # a failed pull is not cached; the next one works


async def test_unreachable_origin_is_a_502_and_the_edge_stays_healthy(tmp_path: Path, make_config,
                                                                       start_edge) -> None:
    from conftest import free_port

    config = make_config(tmp_path / "data", origin_url=f"http://127.0.0.1:{free_port()}", origin_timeout=2)
    async with start_edge(config) as server, aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{server.port}/videos/{VIDEO_ID}/master.m3u8") as r:
            assert r.status == 502
            assert (await r.json())["error"] == "origin unavailable"
        async with client.get(f"http://127.0.0.1:{server.port}/health") as r:
            assert r.status == 200


async def test_disk_cache_evicts_least_recently_used_at_its_bound(tmp_path: Path, origin, media_template: Path,
                                                                 make_config, start_edge) -> None:
    rels = ["240p/0.m4s", "240p/1.m4s", "120p/0.m4s"]
    sizes = [(media_template / VIDEO_ID / rel).stat().st_size for rel in rels]
    bound = sum(sizes) - 1  # the three do not fit together
    config = make_config(tmp_path / "data", origin_url=origin.url, disk_cache_size=bound,
                         hot_object_max_size=1024, memory_cache_size=4096)
    cache_root = tmp_path / "data" / "cache" / "media" / VIDEO_ID
    async with start_edge(config) as server, aiohttp.ClientSession() as client:
        disk = delivery_of(server).disk

        async def get(rel: str) -> None:
            async with client.get(f"http://127.0.0.1:{server.port}/videos/{VIDEO_ID}/{rel}") as r:
                assert r.status == 200
                await r.read()

        for rel in rels:
            await get(rel)
        assert disk.scan_total() <= bound
        assert not (cache_root / rels[0]).exists(), "the least recently used entry goes first"
        assert (cache_root / rels[1]).exists() and (cache_root / rels[2]).exists()
        assert disk.evictions == 1
        await get(rels[0])  # pulled again
        assert origin.fetches[f"{VIDEO_ID}/{rels[0]}"] == 2
        assert disk.scan_total() <= bound


def test_disk_cache_order_survives_a_restart(tmp_path: Path) -> None:
    import os
    import time

    from streamgate.edge.playback.diskcache import CacheMeta, DiskCache

    cache = DiskCache(tmp_path / "cache", max_bytes=300)

    def put(key: str) -> None:
        temp = cache.temp_path(key)
        temp.write_bytes(b"x" * 100)
        cache.commit(key, temp, CacheMeta('"e"', "public, max-age=60", "video/mp4", "", 100, time.time(), 60))

    for key in ("v/a.m4s", "v/b.m4s", "v/c.m4s"):
        put(key)
    # "a" was used most recently (its sidecar touched), so "b" is the oldest.
    past = time.time() - 100
    os.utime(tmp_path / "cache" / "v/b.m4s.meta", (past, past))
    reopened = DiskCache(tmp_path / "cache", max_bytes=300)
    assert reopened.estimate == 300
    temp = reopened.temp_path("v/d.m4s")
    temp.write_bytes(b"y" * 100)
    reopened.commit("v/d.m4s", temp, CacheMeta('"e"', "public, max-age=60", "video/mp4", "", 100, time.time(), 60))
    assert not (tmp_path / "cache" / "v/b.m4s").exists()
    assert {p.name for p in (tmp_path / "cache" / "v").iterdir() if not p.name.endswith(".meta")} == {
        "a.m4s", "c.m4s", "d.m4s"}
    assert reopened.lookup("v/b.m4s") is None and reopened.lookup("v/a.m4s") is not None
