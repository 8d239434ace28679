"""``streamgate upload``'s tus sender (control/tus_send.py) against an in-process edge: kept-alive
PATCHes with sha256 checksums, and the resume from the offset a HEAD reports."""

from __future__ import annotations

import asyncio
import hashlib
import io

import requests
from intake_support import TUS, edge  # noqa: F401  (fixture)

from streamgate.control import tus_send
from streamgate.edge import stores

MiB = 2**20


async def test_sender_resumes_from_the_edges_offset_and_lands_byte_identical(edge) -> None:  # noqa: F811
    e = await edge()
    data = hashlib.shake_256(b"sender").digest(3 * MiB + 321)

    def start() -> str:
        with requests.Session() as session:
            return tus_send.create(session, e.url + "/api/v1/uploads", len(data), {},
                                   {"filename": "s.mp4", "title": "sender"})

    url = await asyncio.to_thread(start)
    # Someone sent the first MiB already: the sender's PATCH at 0 meets a 409, it asks HEAD
    # where the upload stands and goes on from there.
    async with e.session.patch(url, data=io.BytesIO(data[:MiB]), headers={
            **TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}) as r:
        assert r.status == 204
    seen: list[int] = []

    def send() -> None:
        with requests.Session() as session:
            tus_send.Sender(session, url, io.BytesIO(data), len(data), {}, chunk=MiB).send(seen.append)

    await asyncio.to_thread(send)
    assert seen[0] == MiB and seen[-1] == len(data) and seen == sorted(seen)
    video = await e.app[stores.CATALOG].get(url.rsplit("/", 1)[1])
    assert video is not None and video.status == "queued"
    assert video.sha256 == hashlib.sha256(data).hexdigest()


async def test_sender_gives_up_on_a_refusal(edge) -> None:  # noqa: F811
    e = await edge()

    def send() -> int | None:
        with requests.Session() as session:
            url = e.url + "/api/v1/uploads/" + "0" * 32
            try:
                tus_send.Sender(session, url, io.BytesIO(b"x" * 10), 10, {}).send()
            except tus_send.TusError as exc:
                return exc.status
            return None

    assert await asyncio.to_thread(send) == 404
