"""Playback over real HTTP: content types, Range, ETag/304, HEAD, CORS, Cache-Control, bad input.

Each protocol test runs twice: through the fast path and through aiohttp alone
(``edge.fast_path: false``), since both answer the same routes.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

VIDEO_ID = "vid-1"  # the video of the media_template fixture
FAST = pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "aiohttp"])
V = f"/videos/{VIDEO_ID}"


@pytest.fixture
async def client():
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


def url(server, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


@FAST
@pytest.mark.parametrize(("path", "ctype", "cache"), [
    ("/master.m3u8", "application/vnd.apple.mpegurl", "public, max-age=3600"),
    ("/manifest.mpd", "application/dash+xml", "public, max-age=3600"),
    ("/240p/index.m3u8", "application/vnd.apple.mpegurl", "public, max-age=3600"),
    ("/240p/init.mp4", "video/mp4", "public, max-age=31536000, immutable"),
    ("/240p/0.m4s", "video/mp4", "public, max-age=31536000, immutable"),
    ("/240p/90.m4s", "video/mp4", "public, max-age=31536000, immutable"),
    ("/audio/0.m4s", "audio/mp4", "public, max-age=31536000, immutable"),
    ("/poster.jpg", "image/jpeg", "public, max-age=3600"),
])
async def test_files_have_explicit_types_and_cache_policy(fast_path, path, ctype, cache, data_dir: Path,
                                                          make_config, start_edge, client) -> None:
    async with start_edge(make_config(data_dir, fast_path=fast_path)) as server:
        for _ in range(2):  # cold, then from the open-file cache
            async with client.get(url(server, V + path)) as r:
                body = await r.read()
                assert r.status == 200
                assert r.headers["Content-Type"] == ctype
                assert r.headers["Cache-Control"] == cache
                assert r.headers["Access-Control-Allow-Origin"] == "*"
                assert "Content-Range" in r.headers["Access-Control-Expose-Headers"]
                assert body == (data_dir / "media" / VIDEO_ID / path.lstrip("/")).read_bytes()
                assert int(r.headers["Content-Length"]) == len(body)


@FAST
async def test_range_head_etag_and_cors(fast_path, data_dir: Path, make_config, start_edge, client) -> None:
    big = (data_dir / "media" / VIDEO_ID / "240p" / "90.m4s").read_bytes()
    async with start_edge(make_config(data_dir, fast_path=fast_path)) as server:
        seg = url(server, V + "/240p/90.m4s")
        async with client.get(seg, headers={"Range": "bytes=100-199"}) as r:
            assert r.status == 206
            assert await r.read() == big[100:200]
            assert r.headers["Content-Range"] == f"bytes 100-199/{len(big)}"
        async with client.get(seg, headers={"Range": "bytes=-10"}) as r:
            assert r.status == 206 and await r.read() == big[-10:]
        async with client.get(seg, headers={"Range": f"bytes={len(big) - 5}-"}) as r:
            assert r.status == 206 and await r.read() == big[-5:]
        for bad in (f"bytes={len(big)}-", f"bytes={len(big) + 9}-{len(big) + 20}", "bytes=-0"):
            async with client.get(seg, headers={"Range": bad}) as r:
                assert r.status == 416, bad
                assert r.headers["Content-Range"] == f"bytes */{len(big)}"
                assert (await r.json())["error"] == "range not satisfiable"
        async with client.head(seg) as r:
            assert r.status == 200
            assert r.headers["Content-Length"] == str(len(big))
            assert await r.read() == b""
            etag = r.headers["ETag"]
        async with client.get(seg, headers={"If-None-Match": etag}) as r:
            assert r.status == 304
            assert r.headers["ETag"] == etag
            assert await r.read() == b""
        async with client.get(seg, headers={"If-None-Match": '"other"'}) as r:
            assert r.status == 200 and len(await r.read()) == len(big)
        # If-Range with a stale validator: the whole file (RFC 9110 section 13.1.5).
        async with client.get(seg, headers={"Range": "bytes=0-9", "If-Range": '"stale"'}) as r:
            assert r.status == 200 and len(await r.read()) == len(big)
        async with client.options(seg, headers={"Origin": "https://player.example",
                                                "Access-Control-Request-Method": "GET",
                                                "Access-Control-Request-Headers": "range"}) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert {"GET", "HEAD", "OPTIONS"} <= {m.strip() for m in r.headers["Access-Control-Allow-Methods"].split(",")}
            assert "Range" in r.headers["Access-Control-Allow-Headers"]


@FAST
async def test_signed_prefix_calls_access_and_resolves_relative_uris(fast_path, data_dir: Path, make_config,
                                                                     start_edge, client) -> None:
    import time

    stores = pytest.importorskip("streamgate.edge.stores")
    from streamgate.edge.access.tokens import Claims

    async with start_edge(make_config(data_dir, fast_path=fast_path)) as server:
        async with client.get(url(server, f"/s/forged/videos/{VIDEO_ID}/240p/index.m3u8")) as r:
            assert r.status == 403
        token = server.app[stores.SIGNER].sign(Claims(kind="play", vid=VIDEO_ID, exp=int(time.time()) + 60))
        base = f"/s/{token}/videos/{VIDEO_ID}/240p/"
        async with client.get(url(server, base + "index.m3u8")) as r:
            assert r.status == 200
            playlist = (await r.read()).decode()
        # Every URI in the playlist is relative, so it resolves under the signed prefix.
        segment = next(line for line in playlist.splitlines() if line and not line.startswith("#"))
        async with client.get(url(server, base + segment)) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "video/mp4"


@FAST
async def test_growing_playlists_get_the_short_max_age(fast_path, data_dir: Path, make_config, start_edge, client) -> None:
    video = data_dir / "media" / VIDEO_ID
    media_playlist = video / "240p" / "index.m3u8"
    ended = media_playlist.read_text()
    media_playlist.write_text(ended.replace("#EXT-X-ENDLIST\n", "").replace("VOD", "EVENT"))
    mpd = video / "manifest.mpd"
    mpd.write_text(mpd.read_text().replace('type="static"', 'type="dynamic"'))
    config = make_config(data_dir, fast_path=fast_path, open_file_cache_valid=0,
                         live_playlist_max_age=2)
    async with start_edge(config) as server:
        for path in ("/240p/index.m3u8", "/manifest.mpd", "/master.m3u8"):
            async with client.get(url(server, V + path)) as r:
                assert r.headers["Cache-Control"] == "public, max-age=2", path
        async with client.get(url(server, V + "/120p/index.m3u8")) as r:
            assert r.headers["Cache-Control"] == "public, max-age=3600"
        # The job finishes: the playlist is renamed into place with EXT-X-ENDLIST.
        tmp = media_playlist.with_name(".index.m3u8.tmp")
        tmp.write_text(ended)
        tmp.replace(media_playlist)
        async with client.get(url(server, V + "/master.m3u8")) as r:
            assert r.headers["Cache-Control"] == "public, max-age=3600"


TRAVERSALS = [
    "/videos/../../etc/passwd",
    f"/videos/{VIDEO_ID}/../../../etc/passwd",
    f"/videos/{VIDEO_ID}/%2e%2e/%2e%2e/etc/passwd.m3u8",
    f"/videos/{VIDEO_ID}/%2e%2e%2f%2e%2e%2fetc%2fpasswd.m3u8",
    f"/videos/{VIDEO_ID}/240p%2f..%2f..%2fmaster.m3u8",
    f"/videos/{VIDEO_ID}/%252e%252e/master.m3u8",
    f"/videos/{VIDEO_ID}//etc/passwd.m3u8",
    f"/videos/{VIDEO_ID}/240p/%00.m4s",
    f"/videos/{VIDEO_ID}/240p/init.mp4%00.m3u8",
    "/videos/%2e%2e/master.m3u8",
    "/videos/..%2f..%2fetc/master.m3u8",
    f"/videos/{VIDEO_ID}/.hidden.m4s",
    f"/videos/{VIDEO_ID}/240p/index.m3u8.meta",
    f"/videos/{VIDEO_ID}/a/b/c/d.m4s",
    f"/videos/{VIDEO_ID}/..%5c..%5cmaster.m3u8",
]


async def raw_request(port: int, data: bytes, read_timeout: float = 10) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), read_timeout)  # until the server closes
    finally:
        writer.close()


@FAST
async def test_traversal_attempts_never_leave_the_tree(fast_path, data_dir: Path, make_config, start_edge, client) -> None:
    # A file next to the tree that a successful traversal would reach.
    (data_dir / "media" / "passwd.m3u8").write_text("#EXTM3U\nSECRET\n")
    async with start_edge(make_config(data_dir, fast_path=fast_path)) as server:
        for path in TRAVERSALS:
            answer = await raw_request(server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            status = int(answer.split(b" ", 2)[1])
            assert status in (400, 404), (path, answer[:200])
            assert b"SECRET" not in answer and b"root:" not in answer
        answer = await raw_request(server.port, b"GET /videos/" + VIDEO_ID.encode() + b"/master\x00.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert int(answer.split(b" ", 2)[1]) == 400
        async with client.get(url(server, V + "/master.m3u8")) as r:
            assert r.status == 200  # healthy after


@FAST
async def test_symlinks_in_the_media_tree_are_not_followed(fast_path, data_dir: Path, make_config, start_edge,
                                                           client) -> None:
    """A link planted in the tree (a file, a rendition folder, a video folder) leads nowhere."""
    outside = data_dir / "outside"
    (outside / "240p").mkdir(parents=True)
    (outside / "secret.m3u8").write_text("#EXTM3U\nSECRET\n")
    (outside / "240p" / "index.m3u8").write_text("#EXTM3U\nSECRET\n")
    video = data_dir / "media" / VIDEO_ID
    (video / "linked.m3u8").symlink_to(outside / "secret.m3u8")
    (video / "720p").symlink_to(outside / "240p")
    (data_dir / "media" / ("l" * 32)).symlink_to(outside)
    async with start_edge(make_config(data_dir, fast_path=fast_path)) as server:
        for path in (V + "/linked.m3u8", V + "/720p/index.m3u8", f"/videos/{'l' * 32}/secret.m3u8"):
            async with client.get(url(server, path)) as r:
                assert r.status == 404, path
                assert "SECRET" not in await r.text()
        async with client.get(url(server, V + "/master.m3u8")) as r:
            assert r.status == 200  # the real tree still plays


@FAST
async def test_unknown_ids_and_files_are_json_404s(fast_path, data_dir: Path, make_config, start_edge, client) -> None:
    async with start_edge(make_config(data_dir, fast_path=fast_path)) as server:
        for path in ("/videos/nope/master.m3u8", V + "/240p/999.m4s", V + "/9000p/index.m3u8"):
            async with client.get(url(server, path)) as r:
                assert r.status == 404
                body = await r.json()
                assert body["error"] == "not found" and body["detail"]
                assert r.headers["Access-Control-Allow-Origin"] == "*"
        async with client.get(url(server, V + "/master.exe")) as r:
            assert r.status == 400
            assert (await r.json())["error"] == "bad path"


@FAST
async def test_oversized_headers_and_slow_clients(fast_path, data_dir: Path, make_config, start_edge, client) -> None:
    config = make_config(data_dir, fast_path=fast_path, client_timeout=1, max_header_size=2048)
    async with start_edge(config) as server:
        huge = f"GET {V}/master.m3u8 HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 8000}\r\nConnection: close\r\n\r\n".encode()
        answer = await raw_request(server.port, huge)
        assert int(answer.split(b" ", 2)[1]) in (400, 431)
        # A client that sends half a request and stalls is cut off after edge.client_timeout.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET {V}/master.m3u8 HTTP/1.1\r\nHost: x\r\n".encode())
        await writer.drain()
        closed = await asyncio.wait_for(reader.read(), 10)
        assert closed == b"" or closed.startswith(b"HTTP/1.1 4")
        writer.close()
        # And pipelined keep-alive requests are answered in order.
        pipelined = await raw_request(server.port, (
            f"GET {V}/240p/index.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n"
            f"HEAD {V}/master.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").encode())
        assert pipelined.count(b"HTTP/1.1 200 OK") == 2
        async with client.get(url(server, V + "/master.m3u8")) as r:
            assert r.status == 200


async def test_metrics_count_requests_bytes_and_tiers(data_dir: Path, make_config, start_edge, client) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async with start_edge(make_config(data_dir)) as server:
        async with client.get(url(server, V + "/240p/0.m4s")) as r:
            size = len(await r.read())
        async with client.get(url(server, "/videos/nope/master.m3u8")) as r:
            assert r.status == 404
        async with client.get(url(server, "/metrics")) as r:
            text = await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("streamgate_edge_requests_total", (("route", "segment"), ("status", "200")))] >= 1
    assert samples[("streamgate_edge_requests_total", (("route", "playlist"), ("status", "404")))] >= 1
    assert samples[("streamgate_edge_response_bytes_total", (("route", "segment"),))] >= size
    assert "streamgate_edge_request_duration_seconds" in families
    assert "streamgate_edge_cache_requests" in families
    assert not any(name.endswith("_created") for name, _ in samples)


def test_json_error_shape_is_the_edge_contract() -> None:
    from streamgate.edge.errors import HTTPError

    response = HTTPError(404, "not found", "x").response()
    assert json.loads(response.body) == {"error": "not found", "detail": "x"}


async def test_slow_readers_that_progress_are_kept_stalled_ones_cut(data_dir: Path, make_config, start_edge) -> None:
    import socket
    import time

    size = (data_dir / "media" / VIDEO_ID / "240p" / "90.m4s").stat().st_size
    config = make_config(data_dir, client_timeout=1, socket_send_buffer=65536)
    request = f"GET {V}/240p/90.m4s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()

    def download(port: int, pause_s: float, stall_after: int | None) -> int:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            s.connect(("127.0.0.1", port))
            s.sendall(request)
            got = 0
            stalled = False
            s.settimeout(10)
            while True:
                if stall_after is not None and got >= stall_after and not stalled:
                    time.sleep(3)  # the client under test stops reading for 3x client_timeout
                    stalled = True
                try:
                    chunk = s.recv(262144)
                except ConnectionResetError:
                    return got
                if not chunk:
                    return got
                if pause_s and (got + len(chunk)) // 262144 != got // 262144:
                    time.sleep(pause_s)  # a slow client: about 1.2 MiB/s, 2.4 s for the file
                got += len(chunk)

    async with start_edge(config) as server:
        slow = await asyncio.to_thread(download, server.port, 0.2, None)
        assert slow > size, "a slow but moving download runs past client_timeout to the end"
        cut = await asyncio.to_thread(download, server.port, 0.0, 200_000)
        assert cut < size, "a reader that stops is cut off after client_timeout"


@FAST
async def test_clients_leaving_mid_download_leave_the_edge_healthy(fast_path, data_dir: Path, make_config,
                                                                   start_edge, client, caplog) -> None:
    import logging

    caplog.set_level(logging.WARNING)
    request = f"GET {V}/240p/90.m4s HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    async with start_edge(make_config(data_dir, fast_path=fast_path)) as server:
        for _ in range(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(request)
            assert (await reader.readexactly(12)) == b"HTTP/1.1 200"
            writer.transport.abort()  # reset with most of the 3 MiB unsent
        async with client.get(url(server, V + "/240p/90.m4s")) as r:
            assert r.status == 200
            assert len(await r.read()) == (data_dir / "media" / VIDEO_ID / "240p" / "90.m4s").stat().st_size
        from support import async_wait_until

        from streamgate.edge.playback.routes import DELIVERY

        files = server.app[DELIVERY].files

        async def released() -> bool:
            return all(entry.users == 0 for entry in files.entries.values())

        await async_wait_until(released, what="every open file released after the resets")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
