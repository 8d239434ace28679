"""A job that names objects: a real broker and worker, the source and the ladder in SeaweedFS."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import m3u8
import msgspec
import pytest
from storage_support import SeaweedFS
from support import async_wait_until

from streamgate.common.layout import media_prefix, source_key
from streamgate.common.media import TranscodeProgress, TranscodeResult
from streamgate.common.protocol import JobDone, JobFailed, JobStarted
from streamgate.common.storage import ObjectStore, open_store
from streamgate.farm.publish import scratch_root
from streamgate.farm.worker import JobRun, Worker, run_pipeline

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



async def _stage(store, farm, clip):  # type: ignore[no-untyped-def]
    """A source object in the store and the job naming it: (video id, media prefix, job)."""
    video = "v" + uuid.uuid4().hex[:8]
    await store.put(source_key(video, "mp4"), clip)
    prefix = media_prefix(video)
    job = msgspec.structs.replace(farm.job(clip, job_id=video), source="", out_dir="",
                                  source_key=source_key(video, "mp4"), media_prefix=prefix)
    return video, prefix, job

async def test_a_source_object_becomes_a_full_ladder_in_the_store(
        s3_farm, start_broker, client, events, video_factory: Callable[..., Path]) -> None:
    farm = s3_farm
    clip = video_factory("s3farm.mp4", seconds=6.0, width=320, height=240, fps=15)
    store = await open_store(farm.config)
    worker = Worker(farm.config, runner=run_pipeline, worker_id="s3-1")
    task: asyncio.Task[None] | None = None
    try:
        video, prefix, job = await _stage(store, farm, clip)
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


class Proxy:
    """A TCP forwarder to the store that the test can take down and bring back (same port)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


async def test_a_store_going_down_mid_job_fails_the_attempt_and_the_retry_completes(
        farm, seaweedfs: SeaweedFS, start_broker, client, events, video_factory: Callable[..., Path]) -> None:
    from urllib.parse import urlsplit

    target = urlsplit(seaweedfs.endpoint)
    proxy = Proxy(target.hostname or "127.0.0.1", target.port or 80)
    await proxy.up()
    prefix_ns = f"t{uuid.uuid4().hex[:8]}"
    farm.configure(broker={"max_retries": 2, "retry_backoff": "1s"}, storage=seaweedfs.storage_tree(
        prefix=prefix_ns, endpoint=f"http://127.0.0.1:{proxy.port}", connect_timeout="500ms",
        request_timeout="2s"))
    storage = farm.config.storage  # the test's own view goes straight to the store
    direct = msgspec.structs.replace(storage, s3=msgspec.structs.replace(storage.s3, endpoint=seaweedfs.endpoint))
    store = await open_store(direct)
    clip = video_factory("s3down.mp4", seconds=10.0, width=320, height=240, fps=15)
    reached, release = threading.Event(), threading.Event()

    def held(run: JobRun) -> TranscodeResult:
        """The real pipeline; attempt 1 holds at its first encode progress (source read, nothing
        published yet) until the test has taken the store down."""
        def on_progress(p: TranscodeProgress) -> None:
            run.on_progress(p)
            if run.attempt == 1 and p.stage == "encode" and not reached.is_set():
                reached.set()
                release.wait(30)

        return run_pipeline(dataclasses.replace(run, on_progress=on_progress))

    worker = Worker(farm.config, runner=held, worker_id="s3-flaky")
    task: asyncio.Task[None] | None = None
    try:
        video, prefix, job = await _stage(store, farm, clip)
        await start_broker()
        log = await events()
        task = asyncio.create_task(worker.run())
        await client.submit(job)
        # Mid-job: the source was read, the encoders run; the store goes away under them.
        await async_wait_until(lambda: _true(reached.is_set()), timeout=60, what="the run encoding")
        await proxy.down()
        release.set()
        failed = (await log.wait(JobFailed, video, timeout=60))[0]
        assert not failed.final and "unavailable" in failed.reason, failed
        assert list(scratch_root(farm.config).iterdir()) == []  # the failed attempt cleaned up
        await proxy.up()
        done = (await log.wait(JobDone, video, timeout=90))[0]
        assert done.attempts >= 2
        checked, problems = await check_consistent(store, prefix)
        assert checked >= 4 and not problems, problems
        assert "#EXT-X-ENDLIST" in (await store.get(f"{prefix}/240p/index.m3u8")).decode()
        assert list(scratch_root(farm.config).iterdir()) == []
    finally:
        release.set()
        worker.drain()
        if task is not None:
            await task
        if proxy.server is not None:
            await proxy.down()
        await store.close()


async def _true(value: bool) -> bool:
    return value
