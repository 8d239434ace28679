"""The fast path's plain answers (no coroutine, cached heads, cached access verdicts) keep the rules.

The intake's access tests run on aiohttp's TestServer; these run the real listener
(``EdgeServer``: the fast path first), so private videos, bearer tokens and repeated identical
heads are checked on the path that answers without calling the access check.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp
from intake_support import bearer, new_account, sign_in

from streamgate.common.config import config_from_tree
from streamgate.edge import stores
from streamgate.edge.catalog import Video
from streamgate.edge.keys import CONFIG
from streamgate.edge.server import EdgeServer

SEGMENT = bytes(range(256)) * 800  # 200 KiB: answered by sendfile
# About 14 KiB: answered from memory.
BIG_PLAYLIST = "#EXTM3U\n" + "".join(f"#EXTINF:2.0,\n{i}.m4s\n" for i in range(600)) + "#EXT-X-ENDLIST\n"


async def _video(server: EdgeServer, video_id: str, owner: str, visibility: str) -> None:
    media: Path = server.app[CONFIG].storage.media_dir / video_id
    (media / "240p").mkdir(parents=True)
    (media / "master.m3u8").write_text("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n240p/index.m3u8\n")
    (media / "240p" / "index.m3u8").write_text(BIG_PLAYLIST)
    (media / "240p" / "1.m4s").write_bytes(SEGMENT)
    await server.app[stores.CATALOG].create(Video(id=video_id, created_at=time.time(), owner=owner,
                                                  visibility=visibility, status="ready"))


async def _read_response(reader: asyncio.StreamReader, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = b"" if head_only else await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def test_plain_answers_keep_access_rules_and_pipelining(tmp_path: Path, port: int) -> None:
    config = config_from_tree({
        "storage": {"data_dir": str(tmp_path / "data")},
        "server": {"host": "127.0.0.1", "port": port, "workers": 1},
        "auth": {"required": True},
        "uploads": {"resubmit_interval": "1h", "sweep_interval": "1h"},
        "edge": {"rate_limit": {"enabled": False}},
    })
    server = EdgeServer(config)
    await server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            owner, stranger = new_account(), new_account()
            e = SimpleNamespace(session=session, url=url, app=server.app)
            owner_token, stranger_token = await sign_in(e, owner), await sign_in(e, stranger)  # type: ignore[arg-type]
            public, private = "p" * 32, "q" * 32
            await _video(server, public, owner.address, "public")
            await _video(server, private, owner.address, "private")

            # Twice each: the second request finds a cached head and a cached verdict.
            for _ in range(2):
                async with session.get(f"{url}/videos/{private}/240p/1.m4s") as r:
                    assert r.status == 401 and "private" in await r.text()
                async with session.get(f"{url}/videos/{private}/240p/1.m4s", headers=bearer(stranger_token)) as r:
                    assert r.status == 403
                async with session.get(f"{url}/videos/{private}/240p/1.m4s", headers=bearer(owner_token)) as r:
                    assert r.status == 200 and await r.read() == SEGMENT
                async with session.get(f"{url}/videos/{public}/240p/1.m4s") as r:
                    assert r.status == 200 and await r.read() == SEGMENT
                    assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
                    assert r.headers["Access-Control-Allow-Origin"] == "*"
                async with session.get(f"{url}/videos/{public}/240p/2.m4s") as r:
                    assert r.status == 404 and (await r.json())["error"] == "not found"

        # Identical heads pipelined on one connection, then HEAD, then Connection: close.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        get = f"GET /videos/{public}/240p/1.m4s HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        head = f"HEAD /videos/{public}/240p/1.m4s HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        close = f"GET /videos/{public}/master.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        private_get = f"GET /videos/{private}/master.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        writer.write(get * 3 + private_get + head + get + close)
        for _ in range(3):
            status, headers, body = await _read_response(reader)
            assert status == 200 and body == SEGMENT and headers["content-length"] == str(len(SEGMENT))
            assert "connection" not in headers and headers["date"].endswith("GMT")
        status, _, _ = await _read_response(reader)
        assert status == 401
        status, headers, _ = await _read_response(reader, head_only=True)
        assert status == 200 and headers["content-length"] == str(len(SEGMENT))
        status, _, body = await _read_response(reader)
        assert status == 200 and body == SEGMENT, "HEAD sent no body"
        status, headers, body = await _read_response(reader)
        assert status == 200 and headers["connection"] == "close" and body.startswith(b"#EXTM3U")
        assert await asyncio.wait_for(reader.read(), 10) == b"", "closed after Connection: close"
        writer.close()
        await writer.wait_closed()

        # Hundreds of pipelined playlist GETs read late: the memory answers outgrow the socket
        # buffers, so partial writes hand over to the waiting writer, in order, bytes intact.
        # A small receive buffer keeps the client's window small.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
        writer.write(f"GET /videos/{public}/240p/index.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n".encode() * 800)
        await writer.drain()
        for _ in range(800):
            status, _, body = await _read_response(reader)
            assert status == 200 and body == BIG_PLAYLIST.encode()
        writer.close()
        await writer.wait_closed()
    finally:
        await server.close()
