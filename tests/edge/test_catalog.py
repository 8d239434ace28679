"""One contract suite for the catalog, the upload state and the nonces, over SQLite and Redis."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from streamgate.edge.access.nonces import RedisNonceStore, SqliteNonceStore
from streamgate.edge.catalog import RedisCatalog, Rendition, SqliteCatalog, Video, VideoExists
from streamgate.edge.intake.state import RedisUploadStore, SqliteUploadStore, Upload, UploadLocked


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    if request.param == "sqlite":
        path = tmp_path / "edge.sqlite3"
        stores = {"catalog": SqliteCatalog(path), "uploads": SqliteUploadStore(path, tmp_path / "locks"),
                  "nonces": SqliteNonceStore(path), "reopen": lambda: SqliteCatalog(path)}
        yield stores
        for name in ("catalog", "uploads", "nonces"):
            await stores[name].close()
        return
    import redis.asyncio as redis

    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    yield {"catalog": RedisCatalog(client), "uploads": RedisUploadStore(client, lock_ttl_s=0.5),
           "nonces": RedisNonceStore(client), "reopen": lambda: RedisCatalog(client)}
    await client.aclose()


def _video(video_id: str, created_at: float, **fields: Any) -> Video:
    return Video(id=video_id, created_at=created_at, title=f"title {video_id}", **fields)


async def test_create_get_and_duplicate(backend: dict[str, Any]) -> None:
    catalog = backend["catalog"]
    await catalog.create(_video("a" * 32, 100.0, owner="0xAbc", visibility="private", priority=3))
    got = await catalog.get("a" * 32)
    assert got is not None and got.title == "title " + "a" * 32
    assert (got.owner, got.visibility, got.priority, got.status) == ("0xAbc", "private", 3, "uploading")
    assert await catalog.get("b" * 32) is None
    with pytest.raises(VideoExists):
        await catalog.create(_video("a" * 32, 101.0))
    # A second handle on the same store sees the record: it is durable, not in the object.
    assert (await backend["reopen"]().get("a" * 32)) == got


async def test_update_with_guards_and_status_index(backend: dict[str, Any]) -> None:
    catalog = backend["catalog"]
    await catalog.create(_video("v1", 1.0))
    queued = await catalog.update("v1", {"status": "queued", "sha256": "ff"}, when={"uploading"})
    assert queued is not None and queued.status == "queued" and queued.updated_at > 0
    assert await catalog.with_status("queued") == ["v1"]
    assert await catalog.with_status("uploading") == []
    ready = await catalog.update("v1", {"status": "ready", "progress": 1.0, "duration": 2.0,
                                        "renditions": [{"name": "240p", "width": 320, "height": 240,
                                                        "bandwidth": 400_000}]})
    assert ready is not None and ready.renditions == [Rendition(name="240p", width=320, height=240,
                                                                bandwidth=400_000)]
    # A late progress event may not move a ready video back.
    assert await catalog.update("v1", {"status": "transcoding", "progress": 0.5},
                                when={"queued", "transcoding"}) is None
    final = await catalog.get("v1")
    assert final is not None and final.status == "ready" and final.progress == 1.0
    assert await catalog.update("missing", {"status": "ready"}) is None


async def test_concurrent_updates_lose_nothing(backend: dict[str, Any]) -> None:
    catalog = backend["catalog"]
    await catalog.create(_video("v", 1.0))
    await asyncio.gather(catalog.update("v", {"title": "new title"}),
                         catalog.update("v", {"status": "queued"}))
    video = await catalog.get("v")
    assert video is not None and video.title == "new title" and video.status == "queued"


async def test_list_is_paginated_newest_first_and_respects_privacy(backend: dict[str, Any]) -> None:
    catalog = backend["catalog"]
    for i in range(7):
        await catalog.create(_video(f"v{i}", 10.0 + i, owner="0xA" if i % 2 else "0xB",
                                    visibility="private" if i == 5 else "public"))
    page, total = await catalog.page(limit=3, offset=0)
    assert total == 7 and [v.id for v in page] == ["v6", "v5", "v4"]
    page, total = await catalog.page(limit=3, offset=6)
    assert [v.id for v in page] == ["v0"]
    public, total = await catalog.page(limit=10, public_only=True)
    assert total == 6 and "v5" not in [v.id for v in public]
    mine, total = await catalog.page(limit=10, owner="0xA")
    assert total == 3 and [v.id for v in mine] == ["v5", "v3", "v1"]
    empty, total = await catalog.page(limit=10, owner="0xC")
    assert (empty, total) == ([], 0)


async def test_delete(backend: dict[str, Any]) -> None:
    catalog = backend["catalog"]
    await catalog.create(_video("v", 1.0, visibility="public", owner="0xA"))
    await catalog.update("v", {"status": "queued"})
    assert await catalog.delete("v") is True
    assert await catalog.get("v") is None
    assert await catalog.delete("v") is False
    assert await catalog.with_status("queued") == []
    assert await catalog.page(limit=10) == ([], 0)
    assert await catalog.page(limit=10, owner="0xA", public_only=True) == ([], 0)


async def test_upload_state_lifecycle(backend: dict[str, Any]) -> None:
    store = backend["uploads"]
    now = time.time()
    upload = Upload(id="u1", length=10, metadata={"filename": "YS5tcDQ="}, owner="0xA",
                    created_at=now, expires_at=now + 60)
    await store.create(upload)
    assert await store.get("u1") == upload
    await store.save(Upload(id="u1", length=10, offset=10, created_at=now, expires_at=now + 60))
    assert [u.id for u in await store.pending()] == ["u1"]  # all bytes in, completion not run
    await store.save(Upload(id="u1", length=10, offset=10, created_at=now, expires_at=now + 60, done=True))
    assert await store.pending() == []
    assert await store.expired(now) == []
    assert [u.id for u in await store.expired(now + 61)] == ["u1"]
    assert not await store.is_gone("u1")
    await store.remove("u1")
    assert await store.get("u1") is None and await store.is_gone("u1")
    assert not await store.is_gone("never")


async def test_upload_lock_is_exclusive(backend: dict[str, Any]) -> None:
    store = backend["uploads"]
    async with store.lock("u1", 1.0):
        with pytest.raises(UploadLocked):
            async with store.lock("u1", 0.05):
                pass
        async with store.lock("u2", 0.05):  # other uploads are independent
            pass
    async with store.lock("u1", 0.05):  # released
        pass


async def test_nonces_are_single_use_and_expire(backend: dict[str, Any]) -> None:
    nonces = backend["nonces"]
    await nonces.issue("abcdefgh1", 60)
    assert await nonces.take("abcdefgh1") is True
    assert await nonces.take("abcdefgh1") is False
    assert await nonces.take("unknown12") is False
    await nonces.issue("abcdefgh2", 0.001)
    await asyncio.sleep(0.01)  # the expiry itself is what is tested here
    assert await nonces.take("abcdefgh2") is False


async def test_pages_by_cursor_match_pages_by_offset(backend: dict[str, Any]) -> None:
    """Following ``after`` (the last video of the previous page) walks the same pages as counting
    ``offset``, ties of created_at included, for every listing."""
    catalog = backend["catalog"]
    for i in range(23):
        await catalog.create(_video(f"v{i:02d}", 100.0 + i // 3, owner="0xA" if i % 2 else "0xB",
                                    visibility="private" if i % 5 == 0 else "public"))
    for listing in ({}, {"public_only": True}, {"owner": "0xA"}, {"owner": "0xB", "public_only": True}):
        by_offset, offset = [], 0
        while True:
            page, total = await catalog.page(limit=4, offset=offset, **listing)
            if not page:
                break
            by_offset += [v.id for v in page]
            offset += len(page)
        by_cursor, offset, after = [], 0, None
        while True:
            page, total_c = await catalog.page(limit=4, offset=offset, after=after, **listing)
            if not page:
                break
            by_cursor += [v.id for v in page]
            offset += len(page)
            after = (page[-1].created_at, page[-1].id)
        assert by_cursor == by_offset and len(by_offset) == total == total_c, listing
        assert len(set(by_offset)) == len(by_offset)


async def test_a_page_at_any_offset_is_that_slice_of_the_listing(backend: dict[str, Any]) -> None:
    """Past the middle SQLite walks to a page from the oldest end: the same videos in the same order
    (ties of created_at included), short last pages and offsets past the end too."""
    catalog = backend["catalog"]
    for i in range(29):
        await catalog.create(_video(f"v{i:02d}", 100.0 + i // 4, owner="0xA" if i % 3 else "0xB",
                                    visibility="private" if i % 4 == 1 else "public"))
    for listing in ({}, {"public_only": True}, {"owner": "0xA"}, {"owner": "0xB", "public_only": True}):
        everything, total = await catalog.page(limit=100, **listing)
        ids = [v.id for v in everything]
        assert len(ids) == total > 0, listing
        for limit in (1, 5, 20):
            for offset in range(total + 2):
                page, count = await catalog.page(limit=limit, offset=offset, **listing)
                assert count == total
                assert [v.id for v in page] == ids[offset:offset + limit], (listing, limit, offset)


async def test_sqlite_totals_are_kept_not_counted_and_survive_reopening(tmp_path: Path) -> None:
    """The SQLite totals come from ``video_counts`` (triggers), rebuilt for a catalog made before it."""
    path = tmp_path / "edge.sqlite3"
    catalog = SqliteCatalog(path)
    for i in range(6):
        await catalog.create(_video(f"v{i}", float(i), owner="0xA" if i < 4 else "0xB",
                                    visibility="private" if i == 0 else "public"))
    await catalog.delete("v1")
    expected = {(): 5, ("public_only",): 4, ("0xA",): 3, ("0xA", "public_only"): 2, ("0xB",): 2}

    async def totals(c: SqliteCatalog) -> dict[tuple[str, ...], int]:
        out = {}
        for key in expected:
            owner = key[0] if key and key[0].startswith("0x") else None
            out[key] = (await c.page(limit=1, owner=owner, public_only="public_only" in key))[1]
        return out

    assert await totals(catalog) == expected
    await catalog.close()
    # An older catalog file: no counts table yet. Opening it counts what is there.
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE video_counts")
    reopened = SqliteCatalog(path)
    assert await totals(reopened) == expected
    await reopened.close()
