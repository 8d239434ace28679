"""tus uploads into the object store (storage.backend: s3): two in-process edges on one Redis and
a real SeaweedFS, tuspy as the client (issue 12 item 2)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, streamgate_env
from intake_support import TUS, edge  # noqa: F401  (fixture)
from storage_support import SeaweedFS, start_seaweedfs, stop_seaweedfs
from support import wait_until

from streamgate.common import layout
from streamgate.common.config import Config, config_from_tree
from streamgate.common.storage import ObjectStore, open_store
from streamgate.edge import stores
from streamgate.edge.intake import completion as intake
from streamgate.edge.intake import s3_upload
from streamgate.edge.intake.submission import SUBMITTER
from streamgate.edge.keys import CONFIG

MiB = 2**20
OFFSET = {"Content-Type": "application/offset+octet-stream"}


def _config(data_dir: Path, redis_url: str, server: SeaweedFS, prefix: str, **s3: Any) -> Config:
    return config_from_tree({
        "storage": {"data_dir": str(data_dir), **server.storage_tree(prefix, part_size="5MiB", **s3)},
        "cache": {"redis_url": redis_url},
        "auth": {"required": False},
        "uploads": {"resubmit_interval": "1h", "sweep_interval": "1h"},
        "edge": {"rate_limit": {"enabled": False}},
    })


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"  # the session's bucket is shared: one prefix per test


@pytest.fixture
async def objects(seaweedfs: SeaweedFS, prefix: str, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    """The test's own view of the store the edges write to."""
    store = await open_store(config_from_tree({"storage": seaweedfs.storage_tree(prefix)}))
    yield store
    await store.close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamgate.common.synth import make_video

    # Raw video: a real clip of ~13 MiB, so two 5 MiB parts and a tail.
    path = make_video(tmp_path_factory.mktemp("clip") / "clip.mkv", seconds=4, codec="rawvideo")
    assert path.stat().st_size > 2 * 5 * MiB + MiB
    return path


def _tus_upload(base: str, path: Path, *, chunk_size: int, stop_at: int | None = None,
                url: str | None = None):  # type: ignore[no-untyped-def]
    """tuspy (synchronous, requests) with a sha1 Upload-Checksum on every PATCH; run in a thread."""
    from tusclient import client

    with open(path, "rb") as stream:
        uploader = client.TusClient(base + "/api/v1/uploads").uploader(
            file_stream=stream, url=url, chunk_size=chunk_size, metadata={"filename": path.name},
            upload_checksum=True)
        uploader.resumed_from = uploader.offset
        uploader.upload(stop_at)
        return uploader


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _create(e, length: int) -> str:  # type: ignore[no-untyped-def]
    async with e.session.post(e.url + "/api/v1/uploads", headers={
            **TUS, "Upload-Length": str(length),
            "Upload-Metadata": "filename " + base64.b64encode(b"clip.mp4").decode()}) as r:
        assert r.status == 201, await r.text()
        return r.headers["Location"].rsplit("/", 1)[1]


async def _patch(e, upload_id: str, offset: int, body: bytes, **headers: str):  # type: ignore[no-untyped-def]
    # A stream, not bytes: aiohttp warns that a big bytes body blocks the loop.
    async with e.session.patch(f"{e.url}/api/v1/uploads/{upload_id}", data=io.BytesIO(body),
                               headers={**TUS, **OFFSET, "Upload-Offset": str(offset), **headers}) as r:
        await r.read()
        return r.status, dict(r.headers)


async def _offset(e, upload_id: str) -> int:  # type: ignore[no-untyped-def]
    async with e.session.head(f"{e.url}/api/v1/uploads/{upload_id}", headers=TUS) as r:
        assert r.status == 200
        return int(r.headers["Upload-Offset"])


async def _open_multiparts(objects: ObjectStore) -> list[str]:
    return [m.upload_id async for m in objects.list_multipart_uploads(f"{layout.SOURCES}/")]


async def test_upload_at_one_edge_resumed_at_another_lands_whole_in_the_store(
        edge, tmp_path: Path, redis_url: str, seaweedfs: SeaweedFS, prefix: str,  # noqa: F811
        objects: ObjectStore, clip: Path) -> None:
    a = await edge(_config(tmp_path / "a", redis_url, seaweedfs, prefix))
    b = await edge(_config(tmp_path / "b", redis_url, seaweedfs, prefix))
    data = await asyncio.to_thread(clip.read_bytes)
    # Chunks smaller than a part at A: 3 MiB + 3 MiB = one 5 MiB part and a 1 MiB tail.
    first = await asyncio.to_thread(_tus_upload, a.url, clip, chunk_size=3 * MiB, stop_at=6 * MiB)
    upload_id = first.url.rsplit("/", 1)[1]
    state = await b.app[stores.UPLOAD_STORE].get(upload_id)
    assert state is not None and state.offset == 6 * MiB
    assert [p.size for p in state.parts] == [5 * MiB] and state.tail_size == MiB
    assert state.source_key == layout.source_key(upload_id, "mkv")
    assert await objects.get(s3_upload.tail_key(upload_id)) == data[5 * MiB:6 * MiB]
    stored = await objects.list_parts(state.source_key, state.multipart_id)
    assert [(p.part_number, p.etag) for p in stored] == [(1, state.parts[0].etag)]

    # Chunks bigger than a part at B, from the offset A acknowledged.
    resumed = await asyncio.to_thread(_tus_upload, b.url, clip, chunk_size=7 * MiB,
                                      url=f"{b.url}/api/v1/uploads/{upload_id}")
    assert resumed.resumed_from == 6 * MiB and resumed.offset == len(data)

    source = await objects.get(layout.source_key(upload_id, "mkv"))
    assert _sha256(source) == _sha256(data)
    assert await objects.head(s3_upload.tail_key(upload_id)) is None
    assert state.multipart_id not in await _open_multiparts(objects)
    async with a.session.get(f"{a.url}/api/v1/videos/{upload_id}") as r:
        video = await r.json()
    assert video["status"] == "queued" and video["sha256"] == _sha256(data)
    assert await _offset(a, upload_id) == len(data)
    job = a.app[SUBMITTER].spec(await a.app[stores.CATALOG].get(upload_id))
    assert job.source_key == layout.source_key(upload_id, "mkv")
    assert job.media_prefix == layout.media_prefix(upload_id)
    # Nothing of the upload on either edge's disk: in a fleet data_dir is per-host scratch only.
    for host in ("a", "b"):
        assert not list((tmp_path / host / "uploads").glob(f"{upload_id}*"))
        assert not (tmp_path / host / "sources" / upload_id).exists()


async def test_checksum_mismatch_stores_nothing_and_keeps_the_offset(
        edge, tmp_path: Path, redis_url: str, seaweedfs: SeaweedFS, prefix: str,  # noqa: F811
        objects: ObjectStore) -> None:
    a = await edge(_config(tmp_path / "a", redis_url, seaweedfs, prefix))
    data = hashlib.shake_256(b"mismatch").digest(8 * MiB)
    upload_id = await _create(a, len(data))
    status, headers = await _patch(a, upload_id, 0, data[:MiB])
    assert status == 204 and headers["Upload-Offset"] == str(MiB)
    wrong = "sha256 " + base64.b64encode(hashlib.sha256(b"not the body").digest()).decode()
    status, _ = await _patch(a, upload_id, MiB, data[MiB:7 * MiB], **{"Upload-Checksum": wrong})
    assert status == 460
    assert await _offset(a, upload_id) == MiB
    state = await a.app[stores.UPLOAD_STORE].get(upload_id)
    assert state is not None and state.parts == [] and state.tail_size == MiB
    assert await objects.list_parts(state.source_key, state.multipart_id) == []
    assert await objects.get(s3_upload.tail_key(upload_id)) == data[:MiB]

    right = "sha256 " + base64.b64encode(hashlib.sha256(data[MiB:]).digest()).decode()
    status, headers = await _patch(a, upload_id, MiB, data[MiB:], **{"Upload-Checksum": right})
    assert status == 204 and headers["Upload-Offset"] == str(len(data))
    assert _sha256(await objects.get(state.source_key)) == _sha256(data)
    # Deleting the video deletes its source object.
    async with a.session.delete(f"{a.url}/api/v1/videos/{upload_id}") as r:
        assert r.status == 204
    assert await objects.head(state.source_key) is None


async def test_sweeper_aborts_expired_and_stale_multipart_uploads(
        edge, tmp_path: Path, redis_url: str, seaweedfs: SeaweedFS, prefix: str,  # noqa: F811
        objects: ObjectStore) -> None:
    a = await edge(_config(tmp_path / "a", redis_url, seaweedfs, prefix))
    data = hashlib.shake_256(b"sweep").digest(7 * MiB)
    upload_id = await _create(a, len(data) + MiB)
    assert (await _patch(a, upload_id, 0, data))[0] == 204
    live = await _create(a, MiB)  # a fresh upload the sweeper must leave alone
    live_state = await a.app[stores.UPLOAD_STORE].get(live)
    state = await a.app[stores.UPLOAD_STORE].get(upload_id)
    assert state is not None and live_state is not None
    # A multipart upload no state names: an edge killed between opening it and saving the state.
    orphan_key = layout.source_key(uuid.uuid4().hex, "mp4")
    orphan = await objects.create_multipart(orphan_key)
    await objects.upload_part(orphan_key, orphan, 1, b"x" * 1024)
    assert {state.multipart_id, orphan, live_state.multipart_id} <= set(await _open_multiparts(objects))

    # Nothing is stale yet: a sweep now removes nothing.
    assert await intake.sweep_once(a.app) == 0
    assert {state.multipart_id, orphan} <= set(await _open_multiparts(objects))

    expiration = float(a.app[CONFIG].uploads.expiration)
    later = time.time() + expiration + 3600
    # The live upload is "written to" just before the sweep: its expiry follows its last PATCH.
    live_state.expires_at = later + 3600
    await a.app[stores.UPLOAD_STORE].save(live_state)
    swept = await intake.sweep_once(a.app, now=later)
    assert swept == 2  # the expired upload and the orphan
    remaining = set(await _open_multiparts(objects))
    assert state.multipart_id not in remaining and orphan not in remaining
    assert live_state.multipart_id in remaining
    assert await objects.head(s3_upload.tail_key(upload_id)) is None
    async with a.session.head(f"{a.url}/api/v1/uploads/{upload_id}", headers=TUS) as r:
        assert r.status == 410


async def test_a_stopped_store_answers_503_with_retry_after_and_keeps_what_was_acknowledged(
        edge, tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    proc, server = await asyncio.to_thread(start_seaweedfs, tmp_path / "weed")
    try:
        config = _config(tmp_path / "a", redis_url, server, "", connect_timeout="1s", request_timeout="3s")
        a = await edge(config)
        data = hashlib.shake_256(b"down").digest(8 * MiB)
        upload_id = await _create(a, len(data))
        assert (await _patch(a, upload_id, 0, data[:6 * MiB]))[0] == 204
        before = await a.app[stores.UPLOAD_STORE].get(upload_id)
        assert before is not None and before.offset == 6 * MiB
        async with a.session.get(a.url + "/api/v1/health") as r:
            assert (await r.json())["checks"]["storage"]["ok"] is True
    finally:
        await asyncio.to_thread(stop_seaweedfs, proc, server)

    status, headers = await _patch(a, upload_id, 6 * MiB, data[6 * MiB:])
    assert status == 503
    assert int(headers["Retry-After"]) > 0 and headers["Upload-Offset"] == str(6 * MiB)
    after = await a.app[stores.UPLOAD_STORE].get(upload_id)
    assert after == before  # acknowledged parts and tail still recorded, nothing new claimed
    assert await _offset(a, upload_id) == 6 * MiB
    async with a.session.post(a.url + "/api/v1/uploads", headers={**TUS, "Upload-Length": "10"}) as r:
        assert r.status == 503 and int(r.headers["Retry-After"]) > 0
    async with a.session.get(a.url + "/api/v1/health") as r:
        health = await r.json()
    assert r.status == 503 and health["checks"]["storage"]["ok"] is False


def _edge_process(data_dir: Path, log: Path, redis_url: str, server: SeaweedFS, prefix: str):  # type: ignore[no-untyped-def]
    """A real ``streamgate edge`` in s3 mode (its config from the environment, as on a host)."""
    port = free_port()
    env = streamgate_env(data_dir, port, REDIS_URL=redis_url, STREAMGATE__METRICS__ENABLED="false",
                         STREAMGATE__UPLOADS__RESUBMIT_INTERVAL="1h",
                         STREAMGATE__STORAGE__BACKEND="s3", S3_ENDPOINT=server.endpoint,
                         S3_BUCKET=server.bucket, AWS_ACCESS_KEY_ID=server.access_key_id,
                         AWS_SECRET_ACCESS_KEY=server.secret_access_key, AWS_REGION=server.region,
                         STREAMGATE__STORAGE__S3__PREFIX=prefix,
                         STREAMGATE__STORAGE__S3__PART_SIZE="5MiB")
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamgate", "edge", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"edge exited {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return s.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    try:
        wait_until(healthy, timeout=30, what=f"edge on {port}")
    except BaseException:
        proc.kill()
        proc.wait(30)
        raise
    return proc, port


async def test_kill_9_of_the_edge_mid_patch_loses_no_acknowledged_part(
        edge, tmp_path: Path, redis_url: str, seaweedfs: SeaweedFS, prefix: str,  # noqa: F811
        objects: ObjectStore) -> None:
    import redis.asyncio as aioredis

    data = hashlib.shake_256(b"kill-9").digest(12 * MiB)
    source = tmp_path / "kill.mp4"
    await asyncio.to_thread(source.write_bytes, data)
    proc, port = await asyncio.to_thread(_edge_process, tmp_path / "a", tmp_path / "a.log",
                                         redis_url, seaweedfs, prefix)
    b = await edge(_config(tmp_path / "b", redis_url, seaweedfs, prefix))
    try:
        upload_id = await _create(b, len(data))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write((f"PATCH /api/v1/uploads/{upload_id} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                      "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
                      f"Content-Length: {len(data)}\r\n\r\n").encode() + data[:7 * MiB])
        await writer.drain()
        # Past one part, then the edge dies mid-body (no checksum: whole parts are acknowledged).
        deadline = time.monotonic() + 30
        while await _offset(b, upload_id) < 5 * MiB:
            assert time.monotonic() < deadline, "no part acknowledged in time"
            await asyncio.sleep(0.05)
        proc.kill()
        await asyncio.to_thread(proc.wait, 30)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    finally:
        if proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.wait, 30)
    acknowledged = await _offset(b, upload_id)
    state = await b.app[stores.UPLOAD_STORE].get(upload_id)
    assert state is not None and acknowledged == 5 * MiB and [p.size for p in state.parts] == [5 * MiB]
    # The dead edge's lock lapses (it is renewed by its holder only); then edge B continues.
    client = aioredis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 45
        while await client.keys(f"*upload-lock:{upload_id}"):
            assert time.monotonic() < deadline, "the dead edge's lock never lapsed"
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()
    resumed = await asyncio.to_thread(_tus_upload, b.url, source, chunk_size=4 * MiB,
                                      url=f"{b.url}/api/v1/uploads/{upload_id}")
    assert resumed.resumed_from == acknowledged and resumed.offset == len(data)
    assert _sha256(await objects.get(layout.source_key(upload_id, "mp4"))) == _sha256(data)


async def test_a_body_cut_short_keeps_its_whole_parts_and_its_tail(
        edge, tmp_path: Path, redis_url: str, seaweedfs: SeaweedFS, prefix: str,  # noqa: F811
        objects: ObjectStore) -> None:
    a = await edge(_config(tmp_path / "a", redis_url, seaweedfs, prefix))
    data = hashlib.shake_256(b"cut").digest(9 * MiB)
    upload_id = await _create(a, len(data))
    sent = 6 * MiB + 12345
    reader, writer = await asyncio.open_connection("127.0.0.1", a.server.port)
    writer.write((f"PATCH /api/v1/uploads/{upload_id} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                  "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
                  f"Content-Length: {len(data)}\r\n\r\n").encode() + data[:sent])
    await writer.drain()
    deadline = time.monotonic() + 30
    while await _offset(a, upload_id) < 5 * MiB:  # the first part is in
        assert time.monotonic() < deadline, "no part acknowledged in time"
        await asyncio.sleep(0.05)
    writer.close()  # the client goes away mid-body: what arrived is kept (no checksum)
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    deadline = time.monotonic() + 30
    while await _offset(a, upload_id) != sent:
        assert time.monotonic() < deadline, f"offset {await _offset(a, upload_id)}, wanted {sent}"
        await asyncio.sleep(0.05)
    state = await a.app[stores.UPLOAD_STORE].get(upload_id)
    assert state is not None and [p.size for p in state.parts] == [5 * MiB] and state.tail_size == sent - 5 * MiB
    status, headers = await _patch(a, upload_id, sent, data[sent:])
    assert status == 204 and headers["Upload-Offset"] == str(len(data))
    assert _sha256(await objects.get(state.source_key)) == _sha256(data)
