"""A job that names objects: a real broker and worker, the source and the ladder in SeaweedFS."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import m3u8
import msgspec
import pytest
from storage_support import SeaweedFS

from streamgate.common.layout import media_prefix, source_key
from streamgate.common.protocol import JobDone, JobFailed, JobStarted
from streamgate.common.storage import ObjectStore, open_store
from streamgate.farm.publish import scratch_root
from streamgate.farm.worker import Worker, run_pipeline

pytestmark = pytest.mark.usefixtures("no_leaks")

PLAYLISTS = ("index.m3u8", "master.m3u8", "manifest.mpd")


def named_by(rel: str, text: str) -> set[str]:
    """The objects (keys relative to the ladder) that one playlist or manifest names."""
    folder = rel.rpartition("/")[0]
    join = (lambda uri: f"{folder}/{uri}") if folder else (lambda uri: uri)
    if rel.endswith(".mpd"):
        # Templates: every representation's init (segments are named by $Number$; their
        # presence is checked through the media playlists naming the same files).
        names = set()
        for rep in re.findall(r'<Representation[^>]*id="([^"]+)"', text):
            for init in re.findall(r'initialization="([^"]+)"', text):
                names.add(init.replace("$RepresentationID$", rep))
        return names
    playlist = m3u8.loads(text)
    if playlist.is_variant:
        return {join(p.uri) for p in playlist.playlists} | {join(m.uri) for m in playlist.media if m.uri}
    names = {join(s.uri) for s in playlist.segments}
    names |= {join(s.init_section.uri) for s in playlist.segments if s.init_section is not None}
    return names


async def keys_under(store: ObjectStore, prefix: str) -> set[str]:
    return {info.key[len(prefix) + 1:] async for info in store.list(f"{prefix}/")}


async def check_consistent(store: ObjectStore, prefix: str,
                           live: list[str] | None = None) -> tuple[int, list[str]]:
    """Read each playlist, then list: whatever it named must have been stored before it."""
    problems: list[str] = []
    checked = 0
    for rel in sorted(await keys_under(store, prefix)):
        if not rel.endswith(PLAYLISTS):
            continue
        text = (await store.get(f"{prefix}/{rel}")).decode()
        present = await keys_under(store, prefix)
        checked += 1
        if live is not None and rel.endswith("index.m3u8") and "#EXT-X-ENDLIST" not in text:
            live.append(rel)  # a playlist of a job still running
        missing = named_by(rel, text) - present
        if missing:
            problems.append(f"{rel} names missing {sorted(missing)}")
    return checked, problems


@pytest.fixture
def s3_farm(farm, seaweedfs: SeaweedFS):
    farm.configure(storage=seaweedfs.storage_tree(prefix=f"t{uuid.uuid4().hex[:8]}"))
    return farm


async def test_a_source_object_becomes_a_full_ladder_in_the_store(
        s3_farm, start_broker, client, events, video_factory: Callable[..., Path]) -> None:
    farm = s3_farm
    clip = video_factory("s3farm.mp4", seconds=6.0, width=320, height=240, fps=15)
    store = await open_store(farm.config)
    worker = Worker(farm.config, runner=run_pipeline, worker_id="s3-1")
    task: asyncio.Task[None] | None = None
    try:
        video = "v" + uuid.uuid4().hex[:8]
        await store.put(source_key(video, "mp4"), clip)
        prefix = media_prefix(video)
        job = msgspec.structs.replace(farm.job(clip, job_id=video), source="", out_dir="",
                                      source_key=source_key(video, "mp4"), media_prefix=prefix)
        await start_broker()
        log = await events()
        task = asyncio.create_task(worker.run())
        assert (await client.submit(job)).accepted

        # A player's view while the job runs: poll the bucket until it is done.
        seen, problems, live = 0, [], []
        done = asyncio.ensure_future(log.wait(JobDone, video, timeout=60))
        while not done.done():
            checked, found = await check_consistent(store, prefix, live)
            seen += checked
            problems += found
            await asyncio.sleep(0.05)
        result = (await done)[0].result
        assert not problems, problems
        assert seen > 0 and live, "the watcher saw no playlist of the running job (published at the end?)"

        keys = await keys_under(store, prefix)
        assert {"master.m3u8", "manifest.mpd", "240p/index.m3u8", "240p/init.mp4", "audio/index.m3u8"} <= keys
        checked, problems = await check_consistent(store, prefix)
        assert checked >= 4 and not problems, problems
        final = m3u8.loads((await store.get(f"{prefix}/240p/index.m3u8")).decode())
        assert final.is_endlist and len(final.segments) == result.renditions[0].segments >= 5
        assert (await store.head(f"{prefix}/{result.poster}")) is not None
        assert list(scratch_root(farm.config).iterdir()) == []
    finally:
        worker.drain()
        if task is not None:
            await task
        await store.close()


async def test_a_store_that_is_down_fails_the_job_retryably(
        farm, start_broker, client, events, clip, tmp_path) -> None:
    # Nothing listens on the port: every call of the store fails as unavailable.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    farm.configure(broker={"max_retries": 1, "retry_backoff": "2s"},
                   storage={"backend": "s3", "s3": {"endpoint": f"http://127.0.0.1:{port}", "bucket": "b",
                                                    "access_key_id": "k", "secret_access_key": "s",
                                                    "connect_timeout": "500ms", "request_timeout": "1s"}})
    (scratch_root(farm.config) / "left-by-a-killed-worker").mkdir(parents=True)
    from streamgate.farm.publish import sweep_scratch

    assert sweep_scratch(farm.config) == 1
    worker = Worker(farm.config, runner=run_pipeline, worker_id="s3-down")
    await start_broker()
    log = await events()
    task = asyncio.create_task(worker.run())
    try:
        job = msgspec.structs.replace(farm.job(clip, job_id="vdown"), source="", out_dir="",
                                      source_key="sources/vdown/source.mp4", media_prefix="media/vdown")
        await client.submit(job)
        await log.wait(JobFailed, "vdown", timeout=60)
        failed_at = time.monotonic()
        await log.wait(JobStarted, "vdown", count=2, timeout=60)
        assert time.monotonic() - failed_at >= 1.5  # the retry waited out its backoff
        failed = await log.wait(JobFailed, "vdown", count=2, timeout=60)
        assert [f.final for f in failed] == [False, True]  # retried, not dead-lettered at once
        assert "unavailable" in failed[0].reason
        assert list(scratch_root(farm.config).iterdir()) == []
    finally:
        worker.drain()
        await task
