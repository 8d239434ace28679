"""Private videos: the owner's bearer token, signed expiring playback URLs, other wallets refused."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import pytest
from intake_support import bearer, edge, new_account, sign_in  # noqa: F401
from support import wait_until

from streamgate.edge import stores
from streamgate.edge.access.tokens import Claims
from streamgate.edge.catalog import Video
from streamgate.edge.keys import CONFIG

MASTER = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-STREAM-INF:BANDWIDTH=400000,RESOLUTION=320x240\n240p/index.m3u8\n"
MEDIA = ("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"init.mp4\"\n"
         "#EXTINF:2.0,\nseg_00001.m4s\n#EXT-X-ENDLIST\n")


async def _video(e, video_id: str, owner: str, visibility: str) -> None:  # type: ignore[no-untyped-def]
    """A ready video with a tiny media tree (text stand-ins for the segments: access is tested here)."""
    media: Path = e.app[CONFIG].storage.media_dir / video_id
    (media / "240p").mkdir(parents=True)
    (media / "master.m3u8").write_text(MASTER)
    (media / "manifest.mpd").write_text("<MPD/>")
    (media / "240p" / "index.m3u8").write_text(MEDIA)
    (media / "240p" / "init.mp4").write_bytes(b"init")
    (media / "240p" / "seg_00001.m4s").write_bytes(b"segment")
    await e.app[stores.CATALOG].create(Video(id=video_id, created_at=time.time(), owner=owner,
                                             visibility=visibility, status="ready"))


async def _get(e, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    async with e.session.get(url if url.startswith("http") else e.url + url, headers=headers or {}) as r:
        return r.status, await r.text()


async def test_public_plays_private_needs_its_owner(edge) -> None:  # noqa: F811
    e = await edge(auth_required=True)
    owner, stranger = new_account(), new_account()
    owner_token, stranger_token = await sign_in(e, owner), await sign_in(e, stranger)
    public, private = "a" * 32, "b" * 32
    await _video(e, public, owner.address, "public")
    await _video(e, private, owner.address, "private")
    assert (await _get(e, f"/videos/{public}/master.m3u8"))[0] == 200
    assert (await _get(e, f"/videos/{public}/240p/seg_00001.m4s"))[0] == 200
    status, body = await _get(e, f"/videos/{private}/master.m3u8")
    assert status == 401 and "private" in body
    assert (await _get(e, f"/videos/{private}/240p/seg_00001.m4s", bearer(stranger_token)))[0] == 403
    assert (await _get(e, f"/videos/{private}/master.m3u8", bearer(owner_token))) == (200, MASTER)
    # The API hides the private video from others too.
    async with e.session.get(f"{e.url}/api/v1/videos/{private}", headers=bearer(stranger_token)) as r:
        assert r.status == 403 and (await r.json())["error"] == "forbidden"
    async with e.session.get(f"{e.url}/api/v1/videos") as r:
        assert [v["id"] for v in (await r.json())["videos"]] == [public]
    async with e.session.get(f"{e.url}/api/v1/videos?mine=1", headers=bearer(owner_token)) as r:
        assert {v["id"] for v in (await r.json())["videos"]} == {public, private}


async def test_signed_playback_url_opens_every_file_below_it(edge) -> None:  # noqa: F811
    e = await edge(auth_required=True)
    owner, stranger = new_account(), new_account()
    owner_token = await sign_in(e, owner)
    private, other = "c" * 32, "d" * 32
    await _video(e, private, owner.address, "private")
    await _video(e, other, owner.address, "private")
    url = f"{e.url}/api/v1/videos/{private}/playback-url"
    async with e.session.post(url) as r:
        assert r.status == 401
    async with e.session.post(url, headers=bearer(await sign_in(e, stranger))) as r:
        assert r.status == 403
    async with e.session.post(url, headers=bearer(owner_token)) as r:
        assert r.status == 200
        signed = await r.json()
    hls = signed["hls_url"]
    assert f"/s/{signed['token']}/videos/{private}/master.m3u8" in hls
    assert signed["dash_url"].endswith(f"/videos/{private}/manifest.mpd")
    # A player resolves each relative URI against the playlist's URL (RFC 3986 5.2): no rewriting.
    status, master = await _get(e, hls)
    assert status == 200
    media_url = urljoin(hls, master.strip().splitlines()[-1])
    status, media = await _get(e, media_url)
    assert status == 200
    for line in media.splitlines():
        target = line.split('URI="')[1].rstrip('"') if "URI=" in line else line
        if target and not target.startswith("#"):
            assert (await _get(e, urljoin(media_url, target)))[0] == 200, target
    assert (await _get(e, signed["dash_url"]))[0] == 200
    # The same token for another video, tampered, or expired: 403, and the edge stays healthy.
    assert (await _get(e, hls.replace(private, other)))[0] == 403
    token = signed["token"]
    assert (await _get(e, hls.replace(token, token[:-3] + "AAA")))[0] == 403
    expired = e.app[stores.SIGNER].sign(Claims(kind="play", vid=private, exp=time.time() - 1))
    status, body = await _get(e, hls.replace(token, expired))
    assert status == 403 and "expired" in body
    session = e.app[stores.SIGNER].sign(Claims(kind="session", sub=owner.address, exp=time.time() + 60))
    assert (await _get(e, hls.replace(token, session)))[0] == 403  # a session token is no playback URL
    assert (await _get(e, "/health"))[0] == 200


async def test_signed_url_ttl_is_bounded(edge) -> None:  # noqa: F811
    e = await edge(auth_required=False, auth={"signed_url_ttl": "10m"})
    video_id = "e" * 32
    await _video(e, video_id, "", "private")
    async with e.session.post(f"{e.url}/api/v1/videos/{video_id}/playback-url?ttl=60") as r:
        body = await r.json()
    claims = e.app[stores.SIGNER].verify(body["token"], "play")
    assert 50 < claims.exp - time.time() <= 60
    async with e.session.post(f"{e.url}/api/v1/videos/{video_id}/playback-url?ttl=3600") as r:
        assert r.status == 400


async def test_one_owner_rule_for_a_private_video_without_owner(edge) -> None:  # noqa: F811
    """Uploaded without a wallet (auth off), a private video has no owner: playback, the API and
    URL signing all apply the same rule (edge/access/playback.is_owner), so none refuses what
    another allows."""
    e = await edge()
    video_id = "c" * 32
    await _video(e, video_id, "", "private")
    anonymous_play = (await _get(e, f"/videos/{video_id}/master.m3u8"))[0]
    async with e.session.get(f"{e.url}/api/v1/videos/{video_id}") as r:
        anonymous_api = r.status
    async with e.session.post(f"{e.url}/api/v1/videos/{video_id}/playback-url") as r:
        anonymous_sign = r.status
    assert anonymous_play == anonymous_api == anonymous_sign == 200



@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """This test's own redis-server (the session's serves the others), for the test to stop."""
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", "0",
                             "--unixsocket", str(sock), "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: sock.exists() or proc.poll() is not None, timeout=10, what="redis socket")
        yield f"unix://{sock}", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


async def test_a_redis_outage_during_the_access_check_is_503_with_retry_after(edge, own_redis) -> None:  # noqa: F811
    url, redis = own_redis
    e = await edge(redis_url=url)
    public, unseen = "c" * 32, "d" * 32
    await _video(e, public, "", "public")
    await _video(e, unseen, "", "public")
    assert (await _get(e, f"/videos/{public}/master.m3u8")) == (200, MASTER)
    redis.terminate()
    await asyncio.to_thread(redis.wait, 10)
    # Not in the access cache: the check needs the catalog, which is down.
    async with e.session.get(f"{e.url}/videos/{unseen}/master.m3u8") as r:
        body = await r.json()
        assert r.status == 503, body
        assert int(r.headers["Retry-After"]) >= 1
        assert body["error"] == "service unavailable" and "unix://" not in body["detail"]



async def test_concurrent_checks_of_one_video_share_one_catalog_read(edge, redis_url, monkeypatch) -> None:  # noqa: F811
    """When a video's verdict is missing or expired, every connection playing it asks at once:
    one catalog read (Redis, a real round trip) answers them all (issue 18)."""
    from aiohttp.test_utils import make_mocked_request

    from streamgate.edge.access import playback as access

    e = await edge(redis_url=redis_url)
    public, private = "c" * 32, "e" * 32
    await _video(e, public, "", "public")
    await _video(e, private, new_account().address, "private")
    catalog = e.app[stores.CATALOG]
    real_get = catalog.get
    reads: list[str] = []

    async def counted_get(vid: str):  # type: ignore[no-untyped-def]
        reads.append(vid)
        return await real_get(vid)

    monkeypatch.setattr(catalog, "get", counted_get)
    e.app[stores.ACCESS_CACHE].clear()

    async def check(video_id: str) -> int:
        request = make_mocked_request("GET", f"/videos/{video_id}/master.m3u8", app=e.app)
        try:
            await access.authorize_playback(request, video_id)
        except Exception as exc:  # the HTTPError of a refused check
            return int(getattr(exc, "status", 0))
        return 200

    # All started in one loop turn: each would read the catalog if they did not share.
    answers = await asyncio.gather(*(check(public) for _ in range(16)), *(check(private) for _ in range(16)))
    assert answers == [200] * 16 + [401] * 16
    assert sorted(reads) == [public, private]
    assert not e.app[stores.ACCESS_LOOKUPS]  # reaped once answered
