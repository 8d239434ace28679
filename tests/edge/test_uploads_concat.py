"""tus concatenation and creation-defer-length on the disk backend, in-process edges (issue 17)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
from pathlib import Path

from intake_support import TUS, edge  # noqa: F401  (fixture)

from streamgate.edge import stores
from streamgate.edge.intake import completion as intake
from streamgate.edge.intake import concat, source_hash
from streamgate.edge.intake.paths import partial_path

OFFSET = {"Content-Type": "application/offset+octet-stream"}
MiB = 2**20


def _meta(**pairs: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


async def _post(e, **headers: str):  # type: ignore[no-untyped-def]
    async with e.session.post(e.url + "/api/v1/uploads", headers={**TUS, **headers}) as r:
        return r.status, dict(r.headers), await r.read()


async def _patch(e, url: str, offset: int, body: bytes, **headers: str):  # type: ignore[no-untyped-def]
    async with e.session.patch(url, data=io.BytesIO(body),
                               headers={**TUS, **OFFSET, "Upload-Offset": str(offset), **headers}) as r:
        await r.read()
        return r.status, dict(r.headers)


async def _head(e, url: str):  # type: ignore[no-untyped-def]
    async with e.session.head(url, headers=TUS) as r:
        return r.status, dict(r.headers)


def _sha(body: bytes) -> str:
    return "sha256 " + base64.b64encode(hashlib.sha256(body).digest()).decode()


async def _partial(e, body: bytes) -> str:  # type: ignore[no-untyped-def]
    status, headers, text = await _post(e, **{"Upload-Length": str(len(body)), "Upload-Concat": "partial"})
    assert status == 201, text
    url = headers["Location"]
    status, headers = await _patch(e, url, 0, body, **{"Upload-Checksum": _sha(body)})
    assert status == 204 and headers["Upload-Offset"] == str(len(body))
    return url


async def test_options_lists_the_new_extensions(edge) -> None:  # noqa: F811
    e = await edge()
    async with e.session.options(e.url + "/api/v1/uploads") as r:
        extensions = r.headers["Tus-Extension"].split(",")
    assert {"concatenation", "creation-defer-length", "creation", "checksum"} <= set(extensions)


async def test_partials_joined_by_a_final_upload_become_one_video(edge) -> None:  # noqa: F811
    e = await edge()
    data = hashlib.shake_256(b"concat").digest(3 * MiB + 12345)
    pieces = [data[:MiB], data[MiB:2 * MiB + 7], data[2 * MiB + 7:]]
    urls = [await _partial(e, piece) for piece in pieces]
    # Partials are not videos.
    for url in urls:
        async with e.session.get(e.url + "/api/v1/videos/" + url.rsplit("/", 1)[1]) as r:
            assert r.status == 404
    status, headers = await _head(e, urls[0])
    assert status == 200 and headers["Upload-Concat"] == "partial"
    # A bad checksum on a partial's PATCH is refused like any other.
    status, headers, _ = await _post(e, **{"Upload-Length": "10", "Upload-Concat": "partial"})
    assert status == 201
    assert (await _patch(e, headers["Location"], 0, b"0123456789", **{"Upload-Checksum": _sha(b"x")}))[0] == 460
    assert (await _head(e, headers["Location"]))[1]["Upload-Offset"] == "0"

    status, headers, text = await _post(e, **{"Upload-Concat": "final;" + " ".join(urls),
                                              "Upload-Metadata": _meta(filename="clip.mp4", title="joined")})
    assert status == 201, text
    final = headers["Location"]
    video_id = final.rsplit("/", 1)[1]
    status, headers = await _head(e, final)
    assert headers["Upload-Offset"] == headers["Upload-Length"] == str(len(data))
    assert headers["Upload-Concat"] == "final;" + " ".join(urls)
    async with e.session.get(e.url + "/api/v1/videos/" + video_id) as r:
        video = await r.json()
    assert video["status"] == "queued" and video["title"] == "joined"
    assert video["sha256"] == hashlib.sha256(data).hexdigest() and video["size"] == len(data)
    # The partials are gone once joined; a PATCH on the final is forbidden.
    for url in urls:
        assert (await _head(e, url))[0] == 410
    assert (await _patch(e, final, len(data), b""))[0] == 403


async def test_a_final_upload_is_refused_until_its_partials_are_whole(edge) -> None:  # noqa: F811
    e = await edge()
    status, headers, _ = await _post(e, **{"Upload-Length": "100", "Upload-Concat": "partial"})
    unfinished = headers["Location"]
    assert (await _patch(e, unfinished, 0, b"x" * 40))[0] == 204
    status, _, text = await _post(e, **{"Upload-Concat": "final;" + unfinished})
    assert status == 400 and b"not complete" in text
    status, headers, _ = await _post(e, **{"Upload-Length": "3"})
    plain = headers["Location"]
    assert (await _patch(e, plain, 0, b"abc"))[0] == 204
    status, _, text = await _post(e, **{"Upload-Concat": "final;" + plain})
    assert status == 400 and b"not a partial" in text
    status, _, _ = await _post(e, **{"Upload-Concat": "final;/api/v1/uploads/" + "0" * 32})
    assert status == 404
    status, _, _ = await _post(e, **{"Upload-Concat": "final; http://elsewhere/x"})
    assert status == 400


async def test_a_final_cut_short_by_a_crash_is_assembled_by_the_resubmitter(edge) -> None:  # noqa: F811
    e = await edge()
    data = hashlib.shake_256(b"crash").digest(2 * MiB + 3)
    urls = [await _partial(e, data[:MiB]), await _partial(e, data[MiB:])]
    store = e.app[stores.UPLOAD_STORE]

    # What a kill -9 between the final's record and its completion leaves: the record, whole,
    # not done, and half an assembly in its partial file.
    original = intake.complete_upload

    async def crash(app, upload):  # type: ignore[no-untyped-def]
        partial_path(app[intake.CONFIG], upload.id).write_bytes(b"half")
        raise RuntimeError("killed")

    intake_module = __import__("streamgate.edge.intake.tus", fromlist=["intake"])
    intake_module.intake.complete_upload = crash
    try:
        status, _, _ = await _post(e, **{"Upload-Concat": "final;" + " ".join(urls)})
        assert status == 500
    finally:
        intake_module.intake.complete_upload = original
    pending = await store.pending()
    assert len(pending) == 1 and pending[0].concat
    await intake.resubmit_once(e.app)
    video = await e.app[stores.CATALOG].get(pending[0].id)
    assert video is not None and video.status == "queued"
    assert video.sha256 == hashlib.sha256(data).hexdigest()


async def test_deferred_length_is_set_by_a_later_patch(edge) -> None:  # noqa: F811
    e = await edge()
    data = hashlib.shake_256(b"defer").digest(MiB + 99)
    status, headers, text = await _post(e, **{"Upload-Defer-Length": "1",
                                              "Upload-Metadata": _meta(filename="d.mp4")})
    assert status == 201, text
    url = headers["Location"]
    status, headers = await _head(e, url)
    assert headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in headers
    assert (await _patch(e, url, 0, data[:MiB]))[0] == 204
    video_id = url.rsplit("/", 1)[1]
    assert (await e.app[stores.CATALOG].get(video_id)).status == "uploading"  # type: ignore[union-attr]
    # The length below the offset, or changed once set, is refused.
    assert (await _patch(e, url, MiB, b"", **{"Upload-Length": "10"}))[0] == 400
    status, headers = await _patch(e, url, MiB, data[MiB:], **{"Upload-Length": str(len(data))})
    assert status == 204 and headers["Upload-Offset"] == str(len(data))
    status, headers = await _head(e, url)
    assert headers["Upload-Length"] == str(len(data))
    assert (await _patch(e, url, len(data), b"", **{"Upload-Length": "5"}))[0] == 400
    video = await e.app[stores.CATALOG].get(video_id)
    assert video is not None and video.status == "queued" and video.sha256 == hashlib.sha256(data).hexdigest()
    # Both headers, or a value other than 1: 400.
    assert (await _post(e, **{"Upload-Defer-Length": "1", "Upload-Length": "5"}))[0] == 400
    assert (await _post(e, **{"Upload-Defer-Length": "2"}))[0] == 400


async def test_a_deferred_upload_finished_by_an_empty_patch(edge) -> None:  # noqa: F811
    e = await edge()
    status, headers, _ = await _post(e, **{"Upload-Defer-Length": "1"})
    url = headers["Location"]
    assert (await _patch(e, url, 0, b"hello"))[0] == 204
    status, headers = await _patch(e, url, 5, b"", **{"Upload-Length": "5"})
    assert status == 204
    video = await e.app[stores.CATALOG].get(url.rsplit("/", 1)[1])
    assert video is not None and video.status == "queued" and video.size == 5


async def _final_cut_short(e, urls: list[str], crash) -> str:  # type: ignore[no-untyped-def]
    """Create the final upload while ``crash(app, upload)`` stands in for its completion."""
    original = intake.complete_upload
    intake_module = __import__("streamgate.edge.intake.tus", fromlist=["intake"])
    intake_module.intake.complete_upload = crash
    try:
        status, _, _ = await _post(e, **{"Upload-Concat": "final;" + " ".join(urls),
                                         "Upload-Metadata": _meta(filename="j.mp4")})
        assert status == 500
    finally:
        intake_module.intake.complete_upload = original
    pending = await e.app[stores.UPLOAD_STORE].pending()
    assert len(pending) == 1 and pending[0].concat
    return pending[0].id


async def test_a_join_cut_short_after_taking_the_first_partial_is_redone(edge) -> None:  # noqa: F811
    # The first partial's file is renamed into the final's, the rest appended: a crash in the
    # middle leaves the first one renamed and half an append; the redo cuts it back and appends.
    e = await edge()
    data = hashlib.shake_256(b"rename").digest(3 * MiB + 5)
    urls = [await _partial(e, data[:MiB + 1]), await _partial(e, data[MiB + 1:])]
    first = partial_path(e.app[intake.CONFIG], urls[0].rsplit("/", 1)[1])

    async def crash(app, upload):  # type: ignore[no-untyped-def]
        target = partial_path(app[intake.CONFIG], upload.id)
        first.rename(target)

        def append() -> None:
            with open(target, "ab") as f:
                f.write(b"half an append")

        await asyncio.to_thread(append)
        raise RuntimeError("killed")

    final_id = await _final_cut_short(e, urls, crash)
    assert not first.exists()
    await intake.resubmit_once(e.app)
    video = await e.app[stores.CATALOG].get(final_id)
    assert video is not None and video.status == "queued", video
    assert video.sha256 == hashlib.sha256(data).hexdigest()
    assert await asyncio.to_thread(Path(video.source).read_bytes) == data


async def test_a_final_cut_short_after_its_source_moved_is_completed(edge) -> None:  # noqa: F811
    e = await edge()
    data = hashlib.shake_256(b"moved").digest(2 * MiB + 9)
    urls = [await _partial(e, data[:MiB]), await _partial(e, data[MiB:])]

    async def crash(app, upload):  # type: ignore[no-untyped-def]
        await concat.assemble(app, upload)  # joined and moved, then killed before the record
        config = app[intake.CONFIG]
        source = intake.source_path(config, upload.id, "j.mp4")
        source.parent.mkdir(parents=True)
        partial_path(config, upload.id).rename(source)
        source_hash.of(app).forget(upload.id)  # a restarted edge has no running hash
        raise RuntimeError("killed")

    final_id = await _final_cut_short(e, urls, crash)
    await intake.resubmit_once(e.app)
    video = await e.app[stores.CATALOG].get(final_id)
    assert video is not None and video.status == "queued", video
    assert video.sha256 == hashlib.sha256(data).hexdigest()
