"""Differential: generated request heads get the same status line and framing from both paths.

Two edges serve the same media tree on uvloop in a background thread, one with the fast path
(edge/fastpath/) and one with ``edge.fast_path: false`` (aiohttp alone, the reference). Each
generated head goes over a raw socket to both; the status line, Content-Length,
Transfer-Encoding, Content-Range and Connection headers, and whether the connection serves a
next request afterwards, must agree. ``make test`` runs a modest derandomized count; the
``slow`` variant a long random run.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROBE = b"GET /videos/vid-1/poster.jpg HTTP/1.1\r\nHost: probe\r\n\r\n"
COMPARED = ("content-length", "transfer-encoding", "content-range", "connection", "content-type")

METHODS = [b"GET"] * 6 + [b"HEAD"] * 3 + [b"POST", b"PUT", b"OPTIONS", b"get", b"G\x00T", b"GET\t", b""]
TARGETS = [b"/videos/vid-1/master.m3u8", b"/videos/vid-1/240p/init.mp4", b"/videos/vid-1/poster.jpg",
           b"/videos/vid-1/240p/0.m4s", b"/videos/vid-1/240p/999.m4s", b"/videos/nope/master.m3u8",
           b"/videos/vid-1/../x", b"/videos/vid-1/master.m3u8?x=1", b"/videos/vid-1/%6Daster.m3u8",
           b"/api/v1/nothing", b"*", b"http://x/videos/vid-1/master.m3u8", b"/videos/vid-1/master.m3u8#f",
           b"/videos/vid-1/mas\x7fter.m3u8", b"/videos/vid-1/master.m3u8\xff", b"/s/abc/videos/vid-1/master.m3u8",
           b"//videos/vid-1/master.m3u8", b"/videos/vid-1/master.m3u8 x", b""]
VERSIONS = [b"HTTP/1.1"] * 6 + [b"HTTP/1.0"] * 2 + [b"HTTP/1.2", b"HTTP/2.0", b"http/1.1", b"HTTP/0.9",
                                                   b"HTTP/1.10", b"HTTP/1", b""]
EOLS = [b"\r\n"] * 12 + [b"\n", b"\r", b"\r\r\n", b"\n\r"]
NAMES = [b"Host", b"Connection", b"Range", b"If-None-Match", b"If-Range", b"Transfer-Encoding",
         b"Content-Length", b"Accept", b"X-Odd", b"Expect", b"Upgrade", b"CONNECTION", b"host",
         b"Host ", b" Host", b"X\x00Y", b"X Y", b"X(Y)", b"X\x80", b""]
VALUES = {
    b"Connection": [b"close", b"keep-alive", b"TE, close", b"Close", b"upgrade", b"close,keep-alive",
                    b"keep-alive, close", b"", b"clo se", b"closed"],
    b"Range": [b"bytes=0-9", b"bytes=-5", b"bytes=5-", b"bytes=9-1", b"items=0-1", b"bytes=0-1,3-4",
               b"bytes=100000000-", b"bytes=abc", b"bytes=-0"],
    b"Transfer-Encoding": [b"chunked", b"gzip", b"chunked, chunked", b"identity", b"xchunked"],
    b"Content-Length": [b"0", b"00", b"+0", b"-0", b"0, 0", b"abc", b"", b" 0 "],
    b"If-None-Match": [b"*", b'"x"', b"W/\"x\"", b""],
    b"Expect": [b"100-continue", b"x"],
    b"Upgrade": [b"websocket", b"h2c"],
}
ODD = st.binary(max_size=12)


@st.composite
def heads(draw: Any) -> bytes:
    line = b" ".join((draw(st.sampled_from(METHODS)), draw(st.sampled_from(TARGETS)),
                      draw(st.sampled_from(VERSIONS))))
    parts = [line]
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(NAMES))
        choices = VALUES.get(name.strip().title() if name.strip().lower() != b"connection" else b"Connection", [])
        if choices and draw(st.booleans()):
            value = draw(st.sampled_from(choices))
        elif draw(st.integers(0, 9)) == 0:
            value = b"v" * draw(st.sampled_from([4000, 8200, 9000, 20000]))  # around max_header_size
        else:
            value = draw(st.one_of(st.sampled_from([b"x", b"", b" x ", b"\tx", b"x\x7f", b"\xe9t\xe9"]), ODD))
        parts.append(draw(st.sampled_from(EOLS)) + name + draw(st.sampled_from([b":", b": ", b" :", b":\t"])) + value)
    head = b"".join(parts) + draw(st.sampled_from(EOLS)) + b"\r\n"
    if b"chunked" in head.lower():
        head += b"0\r\n\r\n"  # an empty chunked body, so a server that reads one is not left waiting
    return head


def _read_answer(sock: socket.socket, buf: bytearray, head_request: bool) -> tuple[str, dict[str, str]] | None:
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[:end + 4]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    status = lines[0].split(" ")[1] if " " in lines[0] else ""
    if head_request or status in ("204", "304") or status.startswith("1"):
        return lines[0], headers
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while not buf.endswith(b"0\r\n\r\n"):  # only short bodies here: good enough to find the end
            data = sock.recv(65536)
            if not data:
                break
            buf += data
        buf.clear()
    elif "content-length" in headers:
        need = int(headers["content-length"])
        while len(buf) < need:
            data = sock.recv(65536)
            if not data:
                return None
            buf += data
        del buf[:need]
    else:
        while sock.recv(65536):
            pass
    return lines[0], headers


def exchange(port: int, head: bytes) -> tuple[str | None, tuple[str, ...], str]:
    """(status line, compared headers, what became of the connection) for one raw request."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        buf = bytearray()
        try:
            sock.sendall(head)
            answer = _read_answer(sock, buf, head.startswith(b"HEAD "))
        except ConnectionResetError:
            answer = None
        except TimeoutError:
            return None, (), "stalled"
        if answer is None:
            return None, (), "closed"
        status_line, headers = answer
        try:
            sock.sendall(PROBE)
            after = "serves" if _read_answer(sock, buf, False) is not None else "closed"
        except (ConnectionResetError, BrokenPipeError):
            after = "closed"
        except TimeoutError:
            after = "stalled"
        return status_line, tuple(headers.get(k, "").lower() for k in COMPARED), after


@contextmanager
def two_edges(data_dir: Path, make_config: Any) -> Iterator[tuple[int, int]]:
    import uvloop

    from streamgate.edge.server import EdgeServer

    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="edges", daemon=True)
    thread.start()

    async def start() -> list[EdgeServer]:
        servers = [EdgeServer(make_config(data_dir, fast_path=fast)) for fast in (True, False)]
        for server in servers:
            await server.start()
        return servers

    servers = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    try:
        yield servers[0].port, servers[1].port
    finally:
        async def close() -> None:
            for server in servers:
                await server.close()

        asyncio.run_coroutine_threadsafe(close(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def _differential(data_dir: Path, make_config: Any, examples: int, derandomize: bool) -> None:
    with two_edges(data_dir, make_config) as (fast, plain):

        @settings(max_examples=examples, deadline=None, derandomize=derandomize, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(heads())
        def same_answer(head: bytes) -> None:
            want = exchange(plain, head)
            got = exchange(fast, head)
            assert got == want, f"{head!r}: fast path {got}, aiohttp {want}"

        same_answer()


def test_fast_path_and_aiohttp_frame_generated_heads_alike(data_dir: Path, make_config) -> None:
    _differential(data_dir, make_config, examples=150, derandomize=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fast_path_and_aiohttp_frame_generated_heads_alike_long(data_dir: Path, make_config) -> None:
    _differential(data_dir, make_config, examples=3000, derandomize=False)
