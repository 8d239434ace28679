"""A request body that stops arriving fails after the idle timeout, on every aiohttp route
(edge/bodies.py): a stalled PATCH releases its upload at once, and no ERROR is logged."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from urllib.parse import urljoin

import pytest
from intake_support import TUS, edge  # noqa: F401  (fixture)

IDLE = "1s"


async def _stall(e, method: str, path: str, headers: dict[str, str], sent: bytes, declared: int):  # type: ignore[no-untyped-def]
    """Open a raw connection, send the head and part of the body, then nothing."""
    reader, writer = await asyncio.open_connection(e.server.host, e.server.port)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {declared}\r\n\r\n".encode()
                 + sent)
    await writer.drain()
    return reader, writer


async def test_a_stalled_patch_keeps_its_bytes_and_releases_the_upload(edge) -> None:  # noqa: F811
    e = await edge(server={"read_timeout": IDLE})
    meta = "filename " + base64.b64encode(b"clip.mp4").decode()
    async with e.session.post(e.url + "/api/v1/uploads",
                              headers={**TUS, "Upload-Length": "10000", "Upload-Metadata": meta}) as r:
        assert r.status == 201
        url = urljoin(e.url + "/", r.headers["Location"])
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    reader, writer = await _stall(e, "PATCH", path, {**TUS, "Upload-Offset": "0",
                                                     "Content-Type": "application/offset+octet-stream"},
                                  b"a" * 3000, 10000)
    started = time.monotonic()
    try:
        # Another client resumes as soon as the stalled body has timed out: no 423 for ever.
        deadline = started + 15
        while True:
            async with e.session.head(url, headers=TUS) as r:
                offset = int(r.headers["Upload-Offset"])
            if offset == 3000:
                async with e.session.patch(url, data=b"b" * 7000, headers={
                        **TUS, "Upload-Offset": "3000", "Content-Type": "application/offset+octet-stream"}) as r:
                    if r.status == 204:
                        assert r.headers["Upload-Offset"] == "10000"
                        break
                    assert r.status == 423, await r.text()
            assert time.monotonic() < deadline, f"the stalled PATCH still holds the upload (offset {offset})"
            await asyncio.sleep(0.1)
        # The stalled connection was closed by the edge, not left open.
        assert await asyncio.wait_for(reader.read(), 10) is not None
    finally:
        writer.close()


async def test_a_trickling_json_body_times_out_without_an_error_log(edge, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    e = await edge(server={"read_timeout": IDLE})
    caplog.set_level(logging.INFO)
    reader, writer = await _stall(e, "POST", "/api/v1/auth/verify", {"Content-Type": "application/json"},
                                  b'{"mess', 200)
    try:
        answer = await asyncio.wait_for(reader.read(), 15)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"request timeout"' in answer
    finally:
        writer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
