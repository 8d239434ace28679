"""tus concatenation and creation-defer-length into the object store (storage.backend: s3): two
in-process edges on one Redis and a real SeaweedFS (issue 17)."""

from __future__ import annotations

import base64
import hashlib
import io
import uuid
from pathlib import Path

from conftest import free_port
from intake_support import TUS, edge  # noqa: F401  (fixture)
from storage_support import SeaweedFS

from streamgate.common import layout
from streamgate.common.config import Config, config_from_tree
from streamgate.edge import stores
from streamgate.edge.intake import completion as intake
from streamgate.edge.intake import s3_upload
from streamgate.edge.objects import OBJECT_STORE

MiB = 2**20
OFFSET = {"Content-Type": "application/offset+octet-stream"}


def _config(data_dir: Path, redis_url: str, server: SeaweedFS, prefix: str) -> Config:
    port = free_port()  # the edge fixture listens there; the URLs the edge builds start at public_url
    return config_from_tree({
        "server": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"},
        "storage": {"data_dir": str(data_dir), **server.storage_tree(prefix, part_size="5MiB")},
        "cache": {"redis_url": redis_url}, "auth": {"required": False},
        "uploads": {"resubmit_interval": "1h", "sweep_interval": "1h"},
        "edge": {"rate_limit": {"enabled": False}},
    })


async def _post(e, **headers: str):  # type: ignore[no-untyped-def]
    async with e.session.post(e.url + "/api/v1/uploads", headers={**TUS, **headers}) as r:
        return r.status, dict(r.headers), await r.read()


async def _patch(e, url: str, offset: int, body: bytes, **headers: str) -> int:  # type: ignore[no-untyped-def]
    async with e.session.patch(url, data=io.BytesIO(body),
                               headers={**TUS, **OFFSET, "Upload-Offset": str(offset), **headers}) as r:
        await r.read()
        return r.status


async def _partial(e, body: bytes) -> str:  # type: ignore[no-untyped-def]
    status, headers, text = await _post(e, **{"Upload-Length": str(len(body)), "Upload-Concat": "partial"})
    assert status == 201, text
    sha = "sha1 " + base64.b64encode(hashlib.sha1(body).digest()).decode()
    assert await _patch(e, headers["Location"], 0, body, **{"Upload-Checksum": sha}) == 204
    return headers["Location"]


async def _source_sha(e, key: str) -> str:  # type: ignore[no-untyped-def]
    digest = hashlib.sha256()
    async with await e.app[OBJECT_STORE].open_read(key, chunk_size=MiB) as stream:
        async for chunk in stream:
            digest.update(chunk)
    return digest.hexdigest()


async def test_small_partials_are_joined_through_the_edge(edge, tmp_path: Path, redis_url: str,  # noqa: F811
                                                          seaweedfs: SeaweedFS) -> None:
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    a = await edge(_config(tmp_path / "a", redis_url, seaweedfs, prefix))
    b = await edge(_config(tmp_path / "b", redis_url, seaweedfs, prefix))
    data = hashlib.shake_256(b"small").digest(7 * MiB + 5)
    # Under S3's 5 MiB minimum part, so no server-side copy: re-cut into whole parts at the edge.
    pieces = [data[:MiB], data[MiB:4 * MiB], data[4 * MiB:]]
    urls = [await _partial(a, pieces[0]), await _partial(b, pieces[1]), await _partial(a, pieces[2])]
    ids = [u.rsplit("/", 1)[1] for u in urls]
    for upload_id in ids:
        assert (await a.app[OBJECT_STORE].head(s3_upload.partial_key(upload_id))) is not None
    status, headers, text = await _post(b, **{"Upload-Concat": "final;" + " ".join(urls),
                                              "Upload-Metadata": "filename " + base64.b64encode(b"s.mkv").decode()})
    assert status == 201, text
    video_id = headers["Location"].rsplit("/", 1)[1]
    video = await a.app[stores.CATALOG].get(video_id)
    assert video is not None and video.status == "queued" and video.source == layout.source_key(video_id, "mkv")
    assert video.sha256 == hashlib.sha256(data).hexdigest() == await _source_sha(a, video.source)
    upload = await a.app[stores.UPLOAD_STORE].get(video_id)
    assert upload is not None and [p.size for p in upload.parts] == [5 * MiB, 2 * MiB + 5]
    for upload_id in ids:  # the partials' objects are removed with them
        assert await a.app[OBJECT_STORE].head(s3_upload.partial_key(upload_id)) is None
        assert await a.app[stores.UPLOAD_STORE].is_gone(upload_id)


async def test_a_final_whose_edge_died_is_assembled_once_by_the_resubmitter(
        edge, tmp_path: Path, redis_url: str, seaweedfs: SeaweedFS) -> None:  # noqa: F811
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    a = await edge(_config(tmp_path / "a", redis_url, seaweedfs, prefix))
    b = await edge(_config(tmp_path / "b", redis_url, seaweedfs, prefix))
    data = hashlib.shake_256(b"copy").digest(11 * MiB)
    urls = [await _partial(a, data[:6 * MiB]), await _partial(a, data[6 * MiB:])]
    original = intake.complete_upload

    async def killed(app, upload):  # type: ignore[no-untyped-def]
        raise RuntimeError("the edge died here")  # what a kill -9 after the record leaves

    tus = __import__("streamgate.edge.intake.tus", fromlist=["intake"])
    tus.intake.complete_upload = killed
    try:
        assert (await _post(a, **{"Upload-Concat": "final;" + " ".join(urls)}))[0] == 500
    finally:
        tus.intake.complete_upload = original
    (pending,) = await b.app[stores.UPLOAD_STORE].pending()  # in Redis: any edge sees it
    assert pending.concat == [u.rsplit("/", 1)[1] for u in urls]
    await intake.resubmit_once(b.app)
    video = await b.app[stores.CATALOG].get(pending.id)
    assert video is not None and video.status == "queued"
    assert video.sha256 == hashlib.sha256(data).hexdigest() == await _source_sha(b, video.source)
    done = await b.app[stores.UPLOAD_STORE].get(pending.id)
    assert done is not None and done.done and [p.size for p in done.parts] == [6 * MiB, 5 * MiB]
    # A second completion (two edges racing after the crash) changes nothing.
    assert (await intake.complete_upload(a.app, done)).done
    assert await _source_sha(a, video.source) == video.sha256


async def test_a_deferred_length_upload_in_the_store(edge, tmp_path: Path, redis_url: str,  # noqa: F811
                                                     seaweedfs: SeaweedFS) -> None:
    a = await edge(_config(tmp_path / "a", redis_url, seaweedfs, f"t-{uuid.uuid4().hex[:12]}"))
    data = hashlib.shake_256(b"deferred").digest(8 * MiB + 3)
    status, headers, _ = await _post(a, **{"Upload-Defer-Length": "1"})
    url = headers["Location"]
    assert await _patch(a, url, 0, data[:7 * MiB]) == 204  # a part and a 2 MiB tail
    # The rest goes into the tail (the length still unknown), then an empty PATCH sets the length:
    # the stored tail goes up as the last part at completion.
    assert await _patch(a, url, 7 * MiB, data[7 * MiB:]) == 204
    assert await _patch(a, url, len(data), b"", **{"Upload-Length": str(len(data))}) == 204
    video = await a.app[stores.CATALOG].get(url.rsplit("/", 1)[1])
    assert video is not None and video.status == "queued"
    assert video.sha256 == hashlib.sha256(data).hexdigest() == await _source_sha(a, video.source)
