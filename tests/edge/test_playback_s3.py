"""Edges of a fleet on ``storage.backend: s3``: playback from a real SeaweedFS through two
in-process edges sharing a real Redis (issue 12, items 4, 6 and 9's edge part)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from intake_support import Edge, bearer, edge, new_account, sign_in  # noqa: F401 - the fixture
from storage_support import SeaweedFS, start_seaweedfs, stop_seaweedfs

from streamgate.common import layout
from streamgate.common.config import Config, ConfigError, config_from_tree
from streamgate.common.storage import open_store
from streamgate.edge.playback.routes import DELIVERY

VIDEO = "vid-1"  # tests/edge/conftest.py media_template
SECRET = "one-secret-for-the-whole-fleet"


def s3_config(data_dir: Path, server: SeaweedFS, redis_url: str, prefix: str, **extra: Any) -> Config:
    port = free_port()  # the edge fixture listens there; public_url is where sign-in expects it
    tree: dict[str, Any] = {
        "deployment": {"mode": "fleet"},
        "server": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"},
        "storage": {"data_dir": str(data_dir), **server.storage_tree(prefix, connect_timeout="1s",
                                                                   request_timeout="3s")},
        "cache": {"redis_url": redis_url},
        "auth": {"required": False, "secret": SECRET},
        "uploads": {"resubmit_interval": "1h", "sweep_interval": "1h"},
        "edge": {"rate_limit": {"enabled": False}},
        "registry": {"type": "static"},
    }
    for section, values in extra.items():
        tree.setdefault(section, {}).update(values)
    return config_from_tree(tree)


def media_files(template: Path) -> dict[str, bytes]:
    root = template / VIDEO
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


async def put_ladder(config: Config, files: dict[str, bytes], video_id: str = VIDEO) -> None:
    store = await open_store(config)
    try:
        for rel, data in files.items():
            await store.put(layout.media_key(video_id, rel), data)
    finally:
        await store.close()


async def catalogue(e: Edge, video_id: str = VIDEO) -> None:
    """A public, ready catalog entry: in a fleet an edge plays only what the catalog holds."""
    from streamgate.edge.catalog import Video, VideoExists
    from streamgate.edge.stores import CATALOG

    with contextlib.suppress(VideoExists):
        await e.app[CATALOG].create(Video(id=video_id, created_at=time.time(), status="ready"))


class CountingStore:
    """The edge's store with its GETs counted (every other call passes through)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gets: dict[str, int] = {}

    async def open_read(self, key: str, *args: Any, **kwargs: Any) -> Any:
        self.gets[key] = self.gets.get(key, 0) + 1
        return await self.inner.open_read(key, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def count_gets(e: Edge) -> CountingStore:
    delivery = e.app[DELIVERY]
    counting = CountingStore(delivery.store)
    delivery.puller.store = counting  # type: ignore[union-attr]
    return counting


async def fetch(e: Edge, rel: str, method: str = "GET", video: str = VIDEO,
                **headers: str) -> tuple[int, Any, bytes]:
    async with e.session.request(method, f"{e.url}/videos/{video}/{rel}", headers=headers) as r:
        return r.status, r.headers.copy(), await r.read()


@pytest.fixture
async def fleet(edge: Any, tmp_path: Path, seaweedfs: SeaweedFS, redis_url: str,  # noqa: F811
                media_template: Path, request: pytest.FixtureRequest) -> tuple[Edge, Edge, dict[str, bytes]]:
    prefix = f"t-{request.node.name[:40]}-{time.monotonic_ns()}"
    files = media_files(media_template)
    a_conf = s3_config(tmp_path / "a", seaweedfs, redis_url, prefix)
    await put_ladder(a_conf, files)
    a = await edge(a_conf)
    b = await edge(s3_config(tmp_path / "b", seaweedfs, redis_url, prefix))
    await catalogue(a)
    return a, b, files


async def test_ladder_plays_byte_identical_from_both_edges(fleet: tuple[Edge, Edge, dict[str, bytes]]) -> None:
    a, b, files = fleet
    for e in (a, b):
        for rel, data in files.items():
            status, headers, body = await fetch(e, rel)
            assert status == 200, (rel, status, body[:200])
            assert body == data, rel
            assert headers["ETag"].startswith('"') and headers["Content-Length"] == str(len(data))
            if rel.endswith(".m4s") or rel.endswith(".mp4"):
                assert "immutable" in headers["Cache-Control"], rel
            # Served again from the edge's own tiers: same validators, 304, HEAD, Range.
            again = await fetch(e, rel)
            assert again[0] == 200 and again[2] == data and again[1]["ETag"] == headers["ETag"]
            assert (await fetch(e, rel, **{"If-None-Match": headers["ETag"]}))[0] == 304
            head = await fetch(e, rel, "HEAD")
            assert head[0] == 200 and head[2] == b"" and head[1]["Content-Length"] == str(len(data))
            if len(data) > 10:
                part = await fetch(e, rel, Range="bytes=3-9")
                assert part[0] == 206 and part[2] == data[3:10]
                assert part[1]["Content-Range"] == f"bytes 3-9/{len(data)}"
    # The ETag is the object's own, the same from every edge.
    store = await open_store(a.app[DELIVERY].config)
    try:
        info = await store.head(layout.media_key(VIDEO, "240p/0.m4s"))
    finally:
        await store.close()
    assert info is not None
    for e in (a, b):
        assert (await fetch(e, "240p/0.m4s", "HEAD"))[1]["ETag"].strip('"') == info.etag.strip('"')
    # A finished video: its playlists take the VOD lifetime, not the live one.
    _, headers, _ = await fetch(b, "master.m3u8")
    assert headers["Cache-Control"] == f"public, max-age={int(b.app[DELIVERY].config.edge.vod_playlist_max_age)}"
    # Nothing was read from the hosts' media trees: both edges' data dirs have no media.
    for e in (a, b):
        media_dir = e.app[DELIVERY].config.storage.media_dir
        assert not any(media_dir.rglob("*.m4s")) if media_dir.exists() else True
    probe = await asyncio.to_thread(
        subprocess.run, ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type",
                         "-of", "csv=p=0", f"{b.url}/videos/{VIDEO}/master.m3u8"],
        capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert "video" in probe.stdout and "audio" in probe.stdout


async def test_live_playlist_is_fetched_again_after_its_max_age(fleet: tuple[Edge, Edge, dict[str, bytes]]) -> None:
    a, _b, files = fleet
    config = a.app[DELIVERY].config
    live = files["240p/index.m3u8"].replace(b"#EXT-X-ENDLIST\n", b"")
    await put_ladder(config, {"240p/index.m3u8": live}, "vid-live")
    await catalogue(a, "vid-live")
    status, headers, body = await fetch(a, "240p/index.m3u8", video="vid-live")
    assert status == 200 and body == live
    assert headers["Cache-Control"] == f"public, max-age={int(config.edge.live_playlist_max_age)}"
    grown = files["240p/index.m3u8"]
    await put_ladder(config, {"240p/index.m3u8": grown}, "vid-live")
    deadline = time.monotonic() + 30
    while True:
        status, headers, body = await fetch(a, "240p/index.m3u8", video="vid-live")
        if body == grown:
            break
        assert time.monotonic() < deadline, "the live playlist was never fetched again"
        await asyncio.sleep(0.2)
    assert "immutable" not in headers["Cache-Control"]


async def test_100_concurrent_misses_make_one_store_get(fleet: tuple[Edge, Edge, dict[str, bytes]]) -> None:
    a, _b, files = fleet
    counting = count_gets(a)
    rel = "240p/90.m4s"  # 3 MiB: not yet cached anywhere
    results = await asyncio.gather(*(fetch(a, rel) for _ in range(100)))
    assert all(status == 200 and body == files[rel] for status, _, body in results)
    assert counting.gets == {layout.media_key(VIDEO, rel): 1}, counting.gets


async def test_missing_object_is_404(fleet: tuple[Edge, Edge, dict[str, bytes]]) -> None:
    a, _b, _files = fleet
    assert (await fetch(a, "240p/777.m4s"))[0] == 404


async def test_a_video_deleted_on_a_is_gone_from_b_whatever_b_cached(
        fleet: tuple[Edge, Edge, dict[str, bytes]]) -> None:
    from support import async_wait_until

    a, b, files = fleet
    cached = ["master.m3u8", "240p/index.m3u8", "240p/0.m4s"]
    for rel in cached:  # B now holds them in its memory, Redis and disk tiers
        assert (await fetch(b, rel))[0] == 200
    # What DELETE /api/v1/videos/{id} on A does to the fleet's records (this test's id is not one
    # the API route takes); the store keeps the objects here, so only the catalog can say "gone".
    from streamgate.edge.stores import CATALOG

    assert await a.app[CATALOG].delete(VIDEO)

    async def gone() -> bool:
        # B's access verdicts live up to 2 s (edge/access/playback.py CACHE_TTL_S).
        return all([(await fetch(b, rel))[0] == 404 for rel in cached])

    await async_wait_until(gone, timeout=10, interval=0.2, what="B answering 404 for the deleted video")


async def test_private_video_plays_on_b_with_a_token_from_a(fleet: tuple[Edge, Edge, dict[str, bytes]]) -> None:
    from streamgate.edge.stores import CATALOG

    a, b, files = fleet
    account = new_account()
    token = await sign_in(a, account)
    await a.app[CATALOG].update(VIDEO, {"owner": account.address, "visibility": "private"})
    assert (await fetch(b, "master.m3u8"))[0] == 401
    status, _, body = await fetch(b, "master.m3u8", **bearer(token))
    assert status == 200 and body == files["master.m3u8"]
    # B checks A's signature, not just that a token is there.
    assert (await fetch(b, "master.m3u8", **bearer(token[:-2] + "xx")))[0] == 401


async def test_fleet_edge_refuses_to_start_without_a_secret(edge: Any, tmp_path: Path,  # noqa: F811
                                                            seaweedfs: SeaweedFS, redis_url: str) -> None:
    config = s3_config(tmp_path / "c", seaweedfs, redis_url, "unused", auth={"secret": ""})
    with pytest.raises(ConfigError, match=r"auth\.secret.*auth\.secret_file"):
        await edge(config)
    missing = s3_config(tmp_path / "c", seaweedfs, redis_url, "unused",
                        auth={"secret": "", "secret_file": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match=r"auth\.secret_file"):
        await edge(missing)


async def test_store_down_serves_what_it_holds_and_503s_the_rest(
        edge: Any, tmp_path: Path, redis_url: str, media_template: Path) -> None:  # noqa: F811
    proc, server = await asyncio.to_thread(start_seaweedfs, tmp_path / "weed")
    try:
        files = media_files(media_template)
        config = s3_config(tmp_path / "a", server, redis_url, "down")
        await put_ladder(config, files)
        a = await edge(config)
        await catalogue(a)
        async with a.session.get(a.url + "/api/v1/health") as r:
            health = await r.json()
            assert health["checks"]["storage"]["ok"] is True, health
        cached = ["master.m3u8", "240p/index.m3u8", "240p/0.m4s", "240p/90.m4s"]
        for rel in cached:
            assert (await fetch(a, rel))[0] == 200
    finally:
        await asyncio.to_thread(stop_seaweedfs, proc, server)
    for rel in cached:
        status, _, body = await fetch(a, rel)
        assert status == 200 and body == files[rel], rel
    status, headers, body = await fetch(a, "240p/1.m4s")
    assert status == 503, (status, body[:300])
    assert int(headers["Retry-After"]) > 0
    async with a.session.get(a.url + "/api/v1/health") as r:
        health = await r.json()
        assert r.status == 503 and health["status"] == "degraded"
        assert health["checks"]["storage"]["ok"] is False, health


def test_streamgate_edge_in_a_fleet_without_a_secret_exits_2(tmp_path: Path) -> None:
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGATE")}
    env.update(DEPLOYMENT_MODE="fleet", REDIS_URL="redis://127.0.0.1:1/0",
               STREAMGATE_DATA_DIR=str(tmp_path / "data"), SERVER_PORT="1")
    result = subprocess.run([sys.executable, "-m", "streamgate", "edge", "--workers", "1"], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "auth.secret" in result.stderr and "auth.secret_file" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data/state/auth-secret").exists()
