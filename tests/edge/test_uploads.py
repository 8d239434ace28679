"""tus 1.0.0 uploads against an in-process edge: tuspy as the client, every error the protocol names."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import time
from pathlib import Path

import pytest
from intake_support import TUS, edge  # noqa: F401  (fixture)

from streamgate.edge import stores
from streamgate.edge.intake import completion as intake
from streamgate.edge.intake import source_hash
from streamgate.edge.intake.paths import partial_path


def _meta(**pairs: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


def _payload(size: int, seed: int = 7) -> bytes:
    return hashlib.shake_256(f"streamgate-{seed}".encode()).digest(size)


def _tus_upload(base: str, path: Path, *, chunk_size: int, stop_at: int | None = None,
                url: str | None = None, metadata: dict[str, str] | None = None, checksum: bool = True):  # type: ignore[no-untyped-def]
    """tuspy, synchronous (requests): run in a thread, off the loop serving the edge."""
    from tusclient import client

    with open(path, "rb") as stream:  # a stream: tuspy leaks the handles it opens from a path
        uploader = client.TusClient(base + "/api/v1/uploads").uploader(
            file_stream=stream, url=url, chunk_size=chunk_size, metadata=metadata,
            upload_checksum=checksum)
        uploader.resumed_from = uploader.offset  # with a url: what HEAD reported
        uploader.upload(stop_at)
        return uploader


async def _create(e, length: int, **meta: str) -> str:  # type: ignore[no-untyped-def]
    headers = {**TUS, "Upload-Length": str(length),
               "Upload-Metadata": _meta(**(meta or {"filename": "clip.mp4"}))}
    async with e.session.post(e.url + "/api/v1/uploads", headers=headers) as r:
        assert r.status == 201, await r.text()
        return r.headers["Location"]


async def _head(e, url: str) -> tuple[int, dict[str, str]]:  # type: ignore[no-untyped-def]
    async with e.session.head(url, headers=TUS) as r:
        return r.status, dict(r.headers)


async def _patch(e, url: str, offset: int, body: bytes, **headers: str):  # type: ignore[no-untyped-def]
    async with e.session.patch(url, data=io.BytesIO(body), headers={
            **TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream",
            **headers}) as r:
        return r.status, dict(r.headers), (await r.json() if r.status >= 400 else None)


async def test_tuspy_upload_with_checksums_queues_the_video(edge, tmp_path: Path) -> None:  # noqa: F811
    e = await edge()
    data = _payload(300_000)
    path = tmp_path / "my clip.mp4"
    path.write_bytes(data)
    uploader = await asyncio.to_thread(_tus_upload, e.url, path, chunk_size=64 * 1024, metadata={
        "filename": path.name, "title": "My clip", "priority": "99"})
    video_id = uploader.url.rsplit("/", 1)[1]
    async with e.session.get(f"{e.url}/api/v1/videos/{video_id}") as r:
        video = await r.json()
    assert r.status == 200
    assert video["status"] == "queued" and video["title"] == "My clip"
    assert video["sha256"] == hashlib.sha256(data).hexdigest()
    assert video["priority"] == 10  # bounded by uploads.max_priority
    source = tmp_path / "data" / "sources" / video_id / "source.mp4"
    assert source.read_bytes() == data
    assert not (tmp_path / "data" / "uploads" / f"{video_id}.part").exists()
    status, headers = await _head(e, uploader.url)
    assert status == 200 and headers["Upload-Offset"] == str(len(data))


async def test_interrupted_upload_resumes_where_it_stopped(edge, tmp_path: Path) -> None:  # noqa: F811
    e = await edge()
    data = _payload(200_000, seed=2)
    path = tmp_path / "a.mov"
    path.write_bytes(data)
    first = await asyncio.to_thread(_tus_upload, e.url, path, chunk_size=50_000, stop_at=100_000,
                                    metadata={"filename": "a.mov"}, checksum=False)
    resumed = await asyncio.to_thread(_tus_upload, e.url, path, chunk_size=70_000, url=first.url)
    assert resumed.resumed_from == 100_000 and resumed.offset == len(data)
    video_id = first.url.rsplit("/", 1)[1]
    assert (tmp_path / "data" / "sources" / video_id / "source.mov").read_bytes() == data


async def test_creation_with_upload_and_options(edge) -> None:  # noqa: F811
    e = await edge(uploads={"max_size": "1MiB"})
    async with e.session.options(e.url + "/api/v1/uploads") as r:
        assert r.status == 204
        assert r.headers["Tus-Version"] == "1.0.0"
        assert r.headers["Tus-Max-Size"] == str(2**20)
        assert set(r.headers["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "md5", "sha256"}
        assert "creation-with-upload" in r.headers["Tus-Extension"]
    body = b"x" * 1000
    async with e.session.post(e.url + "/api/v1/uploads", data=body[:600], headers={
            **TUS, "Upload-Length": "1000", "Content-Type": "application/offset+octet-stream",
            "Upload-Metadata": _meta(filename="c.mp4")}) as r:
        assert r.status == 201
        assert r.headers["Upload-Offset"] == "600"
        assert "Upload-Expires" in r.headers
        url = r.headers["Location"]
    status, headers, _ = await _patch(e, url, 600, body[600:])
    assert status == 204 and headers["Upload-Offset"] == "1000"
    async with e.session.post(e.url + "/api/v1/uploads", data=b"y" * 20, headers={
            **TUS, "Upload-Length": "10", "Content-Type": "application/offset+octet-stream"}) as r:
        assert r.status == 413 and "Location" not in r.headers
    async with e.session.post(e.url + "/api/v1/uploads", data=b"y" * 10, headers={
            **TUS, "Upload-Length": "10", "Content-Type": "text/plain"}) as r:
        assert r.status == 415


@pytest.mark.parametrize("with_redis", [False, True], ids=["sqlite", "redis"])
async def test_every_tus_error_has_its_status_and_a_json_error(edge, with_redis: bool,  # noqa: F811
                                                               request: pytest.FixtureRequest) -> None:
    redis_url = request.getfixturevalue("redis_url") if with_redis else ""
    e = await edge(uploads={"max_size": "1MiB"}, redis_url=redis_url)
    base = e.url + "/api/v1/uploads"
    # 412 + Tus-Version for a wrong or missing Tus-Resumable
    async with e.session.post(base, headers={"Tus-Resumable": "0.2.2", "Upload-Length": "5"}) as r:
        assert r.status == 412 and r.headers["Tus-Version"] == "1.0.0"
        assert (await r.json())["error"] == "precondition failed"
    # 413 past Tus-Max-Size
    async with e.session.post(base, headers={**TUS, "Upload-Length": str(2**20 + 1)}) as r:
        assert r.status == 413 and "Tus-Max-Size" in (await r.json())["detail"]
    # 400 malformed metadata, bad visibility, missing length
    for headers in ({"Upload-Length": "5", "Upload-Metadata": "filename not*base64"},
                    {"Upload-Length": "5", "Upload-Metadata": "a  b"},
                    {"Upload-Length": "5", "Upload-Metadata": _meta(filename="x") + "," + _meta(filename="y")},
                    {"Upload-Length": "5", "Upload-Metadata": _meta(visibility="secret")},
                    {"Upload-Length": "5", "Upload-Metadata": _meta(priority="high")},
                    {"Upload-Length": "-5"}, {}):
        async with e.session.post(base, headers={**TUS, **headers}) as r:
            assert r.status == 400, headers
            assert (await r.json())["error"] == "bad request"
    url = await _create(e, 100)
    # 415 wrong content type
    status, _, body = await _patch(e, url, 0, b"abc", **{"Content-Type": "application/octet-stream"})
    assert status == 415 and body["error"] == "unsupported media type"
    # 409 offset mismatch, reporting the real offset
    status, headers, body = await _patch(e, url, 5, b"abc")
    assert status == 409 and headers["Upload-Offset"] == "0" and body["error"] == "conflict"
    # 460 checksum mismatch leaves the offset unchanged; an unknown algorithm is 400
    status, _, _ = await _patch(e, url, 0, b"0123456789")
    assert status == 204
    wrong = base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    status, _, body = await _patch(e, url, 10, b"abcdef", **{"Upload-Checksum": f"sha1 {wrong}"})
    assert status == 460 and body["error"] == "checksum mismatch"
    assert (await _head(e, url))[1]["Upload-Offset"] == "10"
    assert partial_path(_config(e), url.rsplit("/", 1)[1]).stat().st_size == 10
    status, _, _ = await _patch(e, url, 10, b"abc", **{"Upload-Checksum": "crc32 AAAA"})
    assert status == 400
    for algorithm in ("md5", "sha256", "sha1"):
        chunk = algorithm.encode() * 2
        good = base64.b64encode(hashlib.new(algorithm, chunk).digest()).decode()
        offset = int((await _head(e, url))[1]["Upload-Offset"])
        status, headers, _ = await _patch(e, url, offset, chunk, **{"Upload-Checksum": f"{algorithm} {good}"})
        assert status == 204 and int(headers["Upload-Offset"]) == offset + len(chunk)
    # 413 a body past Upload-Length
    offset = int((await _head(e, url))[1]["Upload-Offset"])
    status, _, body = await _patch(e, url, offset, b"z" * 200)
    assert status == 413
    # 404 unknown, 410 after termination
    status, _ = await _head(e, base + "/" + "0" * 32)
    assert status == 404
    async with e.session.delete(url, headers=TUS) as r:
        assert r.status == 204
    assert (await _head(e, url))[0] == 410
    status, _, body = await _patch(e, url, offset, b"z")
    assert status == 410 and body["error"] == "gone"
    async with e.session.get(f"{e.url}/api/v1/videos/{url.rsplit('/', 1)[1]}") as r:
        assert r.status == 404  # an unfinished upload's video goes with it
    async with e.session.get(e.url + "/health") as r:
        assert r.status == 200


def _config(e):  # type: ignore[no-untyped-def]
    from streamgate.edge.keys import CONFIG

    return e.app[CONFIG]


async def test_terminating_a_completed_upload_is_refused_and_keeps_the_video(edge) -> None:  # noqa: F811
    """Its bytes became a video: a tus DELETE says so (409, the way to delete the video) instead
    of answering 204 and deleting nothing (issue 14); the source stays for the farm."""
    e = await edge()
    url = await _create(e, 5)
    status, _, _ = await _patch(e, url, 0, b"hello")
    assert status == 204
    video_id = url.rsplit("/", 1)[1]
    async with e.session.delete(url, headers=TUS) as r:
        assert r.status == 409
        body = await r.json()
        assert body["error"] == "conflict" and f"DELETE /api/v1/videos/{video_id}" in body["detail"]
    assert (await _head(e, url))[0] == 200
    async with e.session.get(f"{e.url}/api/v1/videos/{video_id}") as r:
        assert r.status == 200 and (await r.json())["status"] != "uploading"
    sources = list((_config(e).storage.sources_dir / video_id).iterdir())
    assert [p.read_bytes() for p in sources] == [b"hello"]


async def test_a_patch_that_stops_mid_body_keeps_what_arrived(edge) -> None:  # noqa: F811
    e = await edge()
    url = await _create(e, 10_000)
    path = url.split("://", 1)[1].split("/", 1)[1]
    host, port = e.server.host, e.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write((f"PATCH /{path} HTTP/1.1\r\nHost: {host}:{port}\r\nTus-Resumable: 1.0.0\r\n"
                  "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
                  "Content-Length: 10000\r\n\r\n").encode() + b"a" * 6000)
    await writer.drain()
    video_id = path.rsplit("/", 1)[1]
    # The 6000 bytes reached the edge's file: bytes still in aiohttp's buffer when the connection
    # drops are lost with it (the store's calls are awaited, so that can now happen).
    part = partial_path(_config(e), video_id)
    deadline = time.monotonic() + 10
    while not (part.exists() and part.stat().st_size == 6000):
        assert time.monotonic() < deadline, "the edge never wrote the bytes it received"
        await asyncio.sleep(0.02)
    writer.close()  # the client dies mid-body
    await writer.wait_closed()
    store = e.app[stores.UPLOAD_STORE]

    async def durable() -> int:
        upload = await store.get(video_id)
        return upload.offset if upload else -1

    deadline = time.monotonic() + 10
    while await durable() != 6000:
        assert time.monotonic() < deadline, f"offset stayed {await durable()}"
        await asyncio.sleep(0.02)
    status, headers = await _head(e, url)
    assert headers["Upload-Offset"] == "6000"
    assert partial_path(_config(e), video_id).stat().st_size == 6000
    status, headers, _ = await _patch(e, url, 6000, b"b" * 4000)
    assert status == 204 and headers["Upload-Offset"] == "10000"


async def test_a_checksummed_patch_that_stops_keeps_nothing(edge) -> None:  # noqa: F811
    e = await edge()
    url = await _create(e, 10_000)
    path = url.split("://", 1)[1].split("/", 1)[1]
    digest = base64.b64encode(hashlib.sha1(b"a" * 10_000).digest()).decode()
    reader, writer = await asyncio.open_connection(e.server.host, e.server.port)
    writer.write((f"PATCH /{path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                  f"Upload-Checksum: sha1 {digest}\r\nContent-Type: application/offset+octet-stream\r\n"
                  "Content-Length: 10000\r\n\r\n").encode() + b"a" * 6000)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    # A complete, checksummed PATCH then proves the server is past the broken one.
    status, headers, _ = await _patch(e, url, 0, b"a" * 10_000, **{"Upload-Checksum": f"sha1 {digest}"})
    assert status == 204 and headers["Upload-Offset"] == "10000"


async def test_expired_partial_uploads_are_swept(edge) -> None:  # noqa: F811
    e = await edge(uploads={"expiration": "60s"})
    url = await _create(e, 100)
    assert (await _patch(e, url, 0, b"x" * 10))[0] == 204
    done = await _create(e, 3)
    assert (await _patch(e, done, 0, b"abc"))[0] == 204
    status, headers = await _head(e, url)
    expires = headers["Upload-Expires"]
    assert expires.endswith("GMT")
    swept = await intake.sweep_once(e.app, now=time.time() + 120)
    assert swept == 1
    assert (await _head(e, url))[0] == 410
    video_id = url.rsplit("/", 1)[1]
    assert not partial_path(_config(e), video_id).exists()
    async with e.session.get(f"{e.url}/api/v1/videos/{video_id}") as r:
        assert r.status == 404
    async with e.session.get(f"{e.url}/api/v1/videos/{done.rsplit('/', 1)[1]}") as r:
        assert r.status == 200 and (await r.json())["status"] == "queued"  # completed: kept


async def test_queued_video_survives_a_missing_broker_and_is_resubmitted(edge) -> None:  # noqa: F811
    from streamgate.edge.intake.submission import SUBMITTER

    e = await edge()
    url = await _create(e, 3)
    assert (await _patch(e, url, 0, b"abc"))[0] == 204
    video_id = url.rsplit("/", 1)[1]
    video = await e.app[stores.CATALOG].get(video_id)
    assert video.status == "queued" and video.submitted_at is None  # the broker is not running
    assert await intake.resubmit_once(e.app) == 0

    class Accepting:
        """Stands in for a broker that came back: accepts what it is given."""

        def __init__(self) -> None:
            self.jobs: list[object] = []

        async def submit(self, video):  # type: ignore[no-untyped-def]
            self.jobs.append(video.id)
            return None

    accepting = Accepting()
    e.app[SUBMITTER].submit = accepting.submit  # type: ignore[method-assign]
    assert await intake.resubmit_once(e.app) == 1
    assert accepting.jobs == [video_id]
    assert (await e.app[stores.CATALOG].get(video_id)).submitted_at is not None
    assert await intake.resubmit_once(e.app) == 0  # never twice


async def test_x_http_method_override(edge) -> None:  # noqa: F811
    e = await edge()
    url = await _create(e, 4)
    async with e.session.post(url, data=b"abcd", headers={
            **TUS, "X-HTTP-Method-Override": "PATCH", "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream"}) as r:
        assert r.status == 204 and r.headers["Upload-Offset"] == "4"


async def test_a_second_writer_waits_then_gets_423(edge) -> None:  # noqa: F811
    e = await edge(uploads={"lock_wait": "300ms"})
    url = await _create(e, 10_000)
    path = url.split("://", 1)[1].split("/", 1)[1]
    reader, writer = await asyncio.open_connection(e.server.host, e.server.port)
    writer.write((f"PATCH /{path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                  "Content-Type: application/offset+octet-stream\r\nContent-Length: 10000\r\n\r\n").encode()
                 + b"a" * 100)
    await writer.drain()
    # The first PATCH holds the lock while its body trickles in; a second writer is refused.
    deadline = time.monotonic() + 10
    while True:
        status, headers, body = await _patch(e, url, 0, b"b" * 10)
        if status == 423:
            break
        assert time.monotonic() < deadline, (status, body)
    assert body["error"] == "locked" and headers["Retry-After"] == "1"
    writer.write(b"a" * 9900)  # the first writer finishes
    await writer.drain()
    status_line = await reader.readline()
    assert b" 204 " in status_line
    writer.close()
    await writer.wait_closed()
    assert (await _head(e, url))[1]["Upload-Offset"] == "10000"


async def test_an_empty_upload_completes_at_creation(edge) -> None:  # noqa: F811
    e = await edge()
    url = await _create(e, 0)
    video_id = url.rsplit("/", 1)[1]
    video = await e.app[stores.CATALOG].get(video_id)
    assert video.status == "queued" and video.sha256 == hashlib.sha256(b"").hexdigest()


async def test_a_completion_cut_short_is_finished_by_the_resubmitter(edge) -> None:  # noqa: F811
    from streamgate.edge.intake.state import Upload

    e = await edge()
    url = await _create(e, 5, filename="crash.webm")
    video_id = url.rsplit("/", 1)[1]
    store = e.app[stores.UPLOAD_STORE]
    # As if the edge died right after the last checkpoint: every byte durable, completion not run.
    partial_path(_config(e), video_id).write_bytes(b"hello")
    upload = await store.get(video_id)
    await store.save(Upload(id=video_id, length=5, offset=5, metadata=upload.metadata,
                            created_at=upload.created_at, expires_at=upload.expires_at))
    assert (await e.app[stores.CATALOG].get(video_id)).status == "uploading"
    await intake.resubmit_once(e.app)
    video = await e.app[stores.CATALOG].get(video_id)
    assert video.status == "queued" and video.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert await asyncio.to_thread(Path(video.source).read_bytes) == b"hello"
    assert video.source.endswith("source.webm")
    assert (await store.get(video_id)).done


async def test_the_source_sha256_is_computed_as_the_bytes_arrive(edge, monkeypatch) -> None:  # noqa: F811
    # Completion takes the running hash (edge/intake/source_hash.py) and reads nothing back; a
    # checksum mismatch or a PATCH the running hash did not see falls back to one read.
    e = await edge()
    data = _payload(3 * 2**20 + 17, seed=11)
    url = await _create(e, len(data))
    reads: list[Path] = []
    real = intake._hash_file
    monkeypatch.setattr(intake, "_hash_file", lambda path: reads.append(path) or real(path))
    digest = "sha256 " + base64.b64encode(hashlib.sha256(data[:2**20]).digest()).decode()
    assert (await _patch(e, url, 0, data[:2**20], **{"Upload-Checksum": digest}))[0] == 204
    bad = "sha256 " + base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    assert (await _patch(e, url, 2**20, data[2**20:], **{"Upload-Checksum": bad}))[0] == 460
    status, headers, _ = await _patch(e, url, 2**20, data[2**20:])
    assert status == 204 and headers["Upload-Offset"] == str(len(data))
    video = await e.app[stores.CATALOG].get(url.rsplit("/", 1)[1])
    assert video.sha256 == hashlib.sha256(data).hexdigest() and reads == []

    # Resumed where this process never saw the first bytes: the source is read once.
    url = await _create(e, len(data))
    upload_id = url.rsplit("/", 1)[1]
    assert (await _patch(e, url, 0, data[:2**20]))[0] == 204
    e.app[source_hash.SOURCE_HASHES].forget(upload_id)
    assert (await _patch(e, url, 2**20, data[2**20:]))[0] == 204
    video = await e.app[stores.CATALOG].get(upload_id)
    assert video.sha256 == hashlib.sha256(data).hexdigest() and len(reads) == 1
