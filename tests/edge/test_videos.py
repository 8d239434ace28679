"""The video API: listing, status from the broker's events, ETA, delete; resubmission to a real broker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from conftest import streamgate_env
from intake_support import TUS, edge, make_config  # noqa: F401

from streamgate.common.media import Rendition as MediaRendition
from streamgate.common.media import TranscodeResult
from streamgate.common.protocol import JobDone, JobFailed, JobProgress, JobStarted
from streamgate.edge import stores
from streamgate.edge.intake import completion as intake
from streamgate.edge.intake.paths import partial_path
from streamgate.edge.intake.progress import ProgressApplier
from streamgate.edge.keys import CONFIG


async def _upload(e, body: bytes, **meta: str) -> str:  # type: ignore[no-untyped-def]
    import base64

    metadata = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items())
    async with e.session.post(e.url + "/api/v1/uploads", data=body, headers={
            **TUS, "Upload-Length": str(len(body)), "Upload-Metadata": metadata,
            "Content-Type": "application/offset+octet-stream"}) as r:
        assert r.status == 201, await r.text()
        return r.headers["Location"].rsplit("/", 1)[1]


async def test_video_json_follows_the_events(edge) -> None:  # noqa: F811
    e = await edge()
    video_id = await _upload(e, b"abc", filename="talk.mkv", title="A talk")
    async with e.session.get(f"{e.url}/api/v1/videos/{video_id}") as r:
        video = await r.json()
    assert video["status"] == "queued" and video["progress"] == 0 and video["hls_url"] is None
    assert video["created_at"].endswith("Z") and video["title"] == "A talk"
    applier = ProgressApplier(e.app[stores.CATALOG])
    await applier.apply(JobStarted(job_id=video_id, attempt=1))
    await applier.apply(JobProgress(job_id=video_id, attempt=1, fraction=0.25, eta_s=30.0))
    async with e.session.get(f"{e.url}/api/v1/videos/{video_id}") as r:
        video = await r.json()
    assert video["status"] == "transcoding" and video["progress"] == 0.25 and video["eta_s"] == 30.0
    assert video["hls_url"].endswith(f"/videos/{video_id}/master.m3u8")
    result = TranscodeResult(duration_s=2.0, renditions=[
        MediaRendition(name="240p", width=320, height=240, bandwidth=500_000),
        MediaRendition(name="144p", width=192, height=144, bandwidth=200_000)])
    await applier.apply(JobDone(job_id=video_id, attempts=1, result=result))
    await applier.apply(JobProgress(job_id=video_id, attempt=1, fraction=0.9))  # late: ignored
    async with e.session.get(f"{e.url}/api/v1/videos/{video_id}") as r:
        video = await r.json()
    assert video["status"] == "ready" and video["progress"] == 1 and video["duration"] == 2.0
    assert video["renditions"] == [{"name": "240p", "width": 320, "height": 240, "bandwidth": 500_000},
                                   {"name": "144p", "width": 192, "height": 144, "bandwidth": 200_000}]
    assert video["poster_url"].endswith("/poster.jpg") and video["dash_url"].endswith("/manifest.mpd")
    failing = await _upload(e, b"x", filename="bad.mp4")
    await applier.apply(JobFailed(job_id=failing, attempt=1, reason="no video stream", final=False))
    assert (await e.app[stores.CATALOG].get(failing)).status == "queued"  # requeued by the broker
    await applier.apply(JobFailed(job_id=failing, attempt=3, reason="no video stream", final=True))
    async with e.session.get(f"{e.url}/api/v1/videos/{failing}") as r:
        video = await r.json()
    assert video["status"] == "failed" and video["error"] == "no video stream"


async def test_listing_is_paginated(edge) -> None:  # noqa: F811
    e = await edge()
    ids = [await _upload(e, b"a", filename=f"{i}.mp4") for i in range(5)]
    async with e.session.get(e.url + "/api/v1/videos?limit=2") as r:
        page = await r.json()
    assert page["total"] == 5 and [v["id"] for v in page["videos"]] == ids[::-1][:2]
    seen = [v["id"] for v in page["videos"]]
    while page["next"]:
        async with e.session.get(e.url + page["next"]) as r:
            page = await r.json()
        seen += [v["id"] for v in page["videos"]]
    assert seen == ids[::-1]
    for bad in ("limit=0", "limit=1000", "offset=-1", "limit=x"):
        async with e.session.get(e.url + "/api/v1/videos?" + bad) as r:
            assert r.status == 400 and (await r.json())["error"] == "bad request"


async def test_delete_removes_source_media_and_partial(edge) -> None:  # noqa: F811
    e = await edge()
    config = e.app[CONFIG]
    done = await _upload(e, b"abc", filename="a.mp4")
    (config.storage.media_dir / done / "240p").mkdir(parents=True)
    (config.storage.media_dir / done / "240p" / "init.mp4").write_bytes(b"x")
    assert (config.storage.sources_dir / done / "source.mp4").exists()
    async with e.session.delete(f"{e.url}/api/v1/videos/{done}") as r:
        assert r.status == 204
    assert not (config.storage.media_dir / done).exists()
    assert not (config.storage.sources_dir / done).exists()
    async with e.session.get(f"{e.url}/api/v1/videos/{done}") as r:
        assert r.status == 404
    async with e.session.delete(f"{e.url}/api/v1/videos/{done}") as r:
        assert r.status == 404
    # A video still uploading: its partial file and upload go too (the upload answers 410).
    async with e.session.post(e.url + "/api/v1/uploads", headers={**TUS, "Upload-Length": "10"}) as r:
        location = r.headers["Location"]
    partial = location.rsplit("/", 1)[1]
    assert partial_path(config, partial).exists()
    async with e.session.delete(f"{e.url}/api/v1/videos/{partial}") as r:
        assert r.status == 204
    assert not partial_path(config, partial).exists()
    async with e.session.head(location, headers=TUS) as r:
        assert r.status == 410


def _start_broker(data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "streamgate", "broker"],
                                env=streamgate_env(data_dir, 1, STREAMGATE__METRICS__ENABLED="false"),
                                stdout=out, stderr=subprocess.STDOUT)


async def test_queued_video_reaches_a_broker_that_starts_late(edge, tmp_path: Path) -> None:  # noqa: F811
    from streamgate.common.broker_client import BrokerClient

    data_dir = tmp_path / "data"
    config = make_config(data_dir)
    e = await edge(config=config)
    video_id = await _upload(e, b"not really a video", filename="late.mp4", priority="4")
    assert await intake.resubmit_once(e.app) == 0  # no broker yet: stays queued
    assert (await e.app[stores.CATALOG].get(video_id)).submitted_at is None
    log = tmp_path / "broker.log"
    broker = _start_broker(data_dir, log)
    client = BrokerClient(config.broker_endpoints, timeout_s=1.0)
    try:
        deadline = time.monotonic() + 20
        while not await intake.resubmit_once(e.app):
            assert broker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the resubmitter never reached the broker"
            await asyncio.sleep(0.1)
        info = await client.job(video_id)
        assert info is not None and info.state == "queued" and info.priority == 4
        assert (await e.app[stores.CATALOG].get(video_id)).submitted_at is not None
        # DELETE cancels the job at the broker.
        async with e.session.delete(f"{e.url}/api/v1/videos/{video_id}") as r:
            assert r.status == 204
        info = await client.job(video_id)
        assert info is None or info.state == "cancelled"
    finally:
        await client.close()
        broker.terminate()
        broker.wait(20)
