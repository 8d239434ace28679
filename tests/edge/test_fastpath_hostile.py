"""The fast path under hostile or unlucky input answers as aiohttp would (issue 14).

Each test drives a real in-process edge over real sockets; an edge with ``edge.fast_path: false``
is the reference for what aiohttp answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import socket
from pathlib import Path

import pytest
from fastpath_wire import exchange, read_answer

from streamgate.edge.fastpath.request import FastPathUnsupported, PlaybackRequest

SEG = "/videos/vid-1/240p/90.m4s"  # 3 MiB: sendfile, and more than a small send buffer holds
PLAYLIST = "/videos/vid-1/master.m3u8"


@pytest.mark.parametrize("head", [
    b"GET /videos/vid-1/master.m3u8 HTTP/1.1\r\nHost: x\nX-A: y\r\n\r\n",      # bare LF inside
    b"GET /videos/vid-1/master.m3u8 HTTP/1.1\nHost: x\r\n\r\n",                # bare LF after the line
    b"GET /videos/vid-1/master.m3u8 HTTP/1.1\r\nHost: x\rX-A: y\r\n\r\n",      # bare CR
    b"GET /videos/vid-1/master.m3u8 HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",  # NUL in a value
    b"GET /videos/vid-1/master.m3u8 HTTP/1.1\r\nHo\x00st: x\r\n\r\n",          # NUL in a name
    b"GET /videos/vid-1/master.m3u8 HTTP/1.1\r\nX A: y\r\n\r\n",               # space in a name
    b"GET /videos/vid-1/master.m3u8 HTTP/1.1\nHost: x\n\n",                      # LF only: no CRLF CRLF
], ids=["lf-inside", "lf-line", "cr", "nul-value", "nul-name", "space-name", "lf-only"])
async def test_malformed_heads_get_aiohttps_answer(head: bytes, data_dir: Path, make_config,
                                                  start_edge) -> None:
    async with start_edge(make_config(data_dir, fast_path=False)) as plain, \
            start_edge(make_config(data_dir, fast_path=True)) as fast:
        want, want_open = await exchange(plain.port, head)
        got, got_open = await exchange(fast.port, head)
        assert want is not None and want.status_line.split()[1] == "400", want
        assert got is not None and got.status_line == want.status_line
        assert got_open == want_open is False, "a malformed head closes the connection"


async def test_head_sent_once_when_sendfile_blocks_after_the_head(data_dir: Path, make_config, start_edge,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel answers EAGAIN to the first sendfile after sendmsg took the whole head (a socket
    # with room for the head only): injected, since no real socket does that on demand.
    real_sendfile = os.sendfile
    calls = {"n": 0}

    def sendfile_blocking_once(*args: int) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_sendfile(*args)

    big = (data_dir / "media" / "vid-1" / "240p" / "90.m4s").read_bytes()
    async with start_edge(make_config(data_dir, fast_path=True)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        request = f"GET {SEG} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        writer.write(request)  # the first one fills the open-file cache, the second is the plain answer
        answer = await read_answer(reader)
        assert answer is not None and answer.body == big
        monkeypatch.setattr(os, "sendfile", sendfile_blocking_once)
        writer.write(request * 2)
        for _ in range(2):
            answer = await read_answer(reader)
            assert answer is not None and answer.status_line == "HTTP/1.1 200 OK"
            assert answer.body == big, "the body starts with a second copy of the head"
        assert calls["n"] >= 2
        writer.close()
        await writer.wait_closed()


async def test_input_is_bounded_while_an_answer_is_in_flight(data_dir: Path, make_config, start_edge) -> None:
    config = make_config(data_dir, fast_path=True, socket_send_buffer=65536)
    async with start_edge(config) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET {SEG} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sock.setblocking(False)
        junk = b"x" * 65536
        sent, loop = 0, asyncio.get_running_loop()
        # Keep sending (never reading) until the edge stops taking bytes for a second, or 64 MiB.
        while sent < 64 * 2**20:
            try:
                sent += sock.send(junk)
                continue
            except BlockingIOError:
                pass
            _, writable, _ = await loop.run_in_executor(None, select.select, [], [sock], [], 1.0)
            if not writable:
                break
        connections = list(server.fast.connections)
        buffered = max((len(c.buf) for c in connections), default=0)
        sock.close()
        # One read beyond the bound at most (a read is up to 256 KiB on both loops).
        assert buffered <= int(config.edge.max_header_size) * 4 + 2**18, f"{buffered} bytes buffered of {sent} sent"
        assert sent < 64 * 2**20, "the edge read everything a client sent while it was busy"


@pytest.mark.parametrize(("version", "connection", "keeps"), [
    ("1.1", "TE, close", False), ("1.1", "close , TE", False), ("1.1", "keep-alive", True),
    ("1.1", "TE", True), ("1.0", "TE, keep-alive", True), ("1.0", "TE", False),
])
async def test_connection_header_is_a_token_list(version: str, connection: str, keeps: bool, data_dir: Path,
                                                 make_config, start_edge) -> None:
    head = f"GET {PLAYLIST} HTTP/{version}\r\nHost: x\r\nConnection: {connection}\r\n\r\n".encode()
    async with start_edge(make_config(data_dir, fast_path=False)) as plain, \
            start_edge(make_config(data_dir, fast_path=True)) as fast:
        want, want_open = await exchange(plain.port, head)
        got, got_open = await exchange(fast.port, head)
        assert want is not None and got is not None
        assert want_open is keeps and got_open is keeps, (want_open, got_open)
        assert got.status_line == want.status_line
        assert got.headers.get("connection", "").lower() == want.headers.get("connection", "").lower()


async def test_pipelined_requests_are_answered_after_a_half_close(data_dir: Path, make_config,
                                                                  start_edge) -> None:
    big = (data_dir / "media" / "vid-1" / "240p" / "90.m4s").read_bytes()
    async with start_edge(make_config(data_dir, fast_path=True, socket_send_buffer=65536)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        get = f"GET {SEG} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        writer.write(get * 3)
        writer.write_eof()  # the first answer is still on its way when the edge reads the EOF
        for i in range(3):
            answer = await read_answer(reader)
            assert answer is not None, f"answer {i + 1} of 3 was dropped"
            assert answer.body == big
        assert await asyncio.wait_for(reader.read(), 20) == b""
        writer.close()
        await writer.wait_closed()


def test_fastpath_unsupported_is_not_an_attribute_error() -> None:
    # An access check's getattr(request, name, default) or hasattr() must not silently read
    # "absent" on the fast path: the request goes to aiohttp instead.
    assert not issubclass(FastPathUnsupported, AttributeError)
    view = PlaybackRequest(None, "GET", b"/videos/x/a.m4s", b"GET / HTTP/1.1", {})  # type: ignore[arg-type]
    with pytest.raises(FastPathUnsupported):
        hasattr(view, "cookies")
    with pytest.raises(FastPathUnsupported):
        getattr(view, "remote", None)


def _errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


MARK = b"ECHO-MARK"


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "aiohttp"])
@pytest.mark.parametrize("head", [
    b"GET /videos/vid-1/master.m3u8 HTTP/1.1\r\nHost: x\nX-ECHO-MARK: y\r\n\r\n",
    b"GET /videos/vid-1/master.m3u8 HTTP/1.1\r\nHost: x\r\nX ECHO-MARK: y\r\n\r\n",
    b"GET /videos/vid-1/master.m3u8 HTTP/1.1\r\nHost: ECHO-MARK\x00\r\n\r\n",
    b"GET /videos/vid-1/master.m3u8 HTTP/1.1\r\n\r\n",  # no Host; and none of ECHO-MARK to echo
    b"GET /videos/vid-1/ECHO-MARK HTTP/7.1\r\nHost: x\r\n\r\n",
    b"GET /videos/vid-1/master.m3u8 HTTP/1.1\r\nHost: x\r\nX-ECHO-MARK: " + b"v" * 9000 + b"\r\n\r\n",
    b"G\x00T /videos/ECHO-MARK HTTP/1.1\r\nHost: x\r\n\r\n",
], ids=["bare-lf", "space-name", "nul", "no-host", "version", "long-field", "method"])
async def test_refused_heads_get_json_without_echo_or_error_log(fast_path: bool, head: bytes, data_dir: Path,
                                                                make_config, start_edge,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    async with start_edge(make_config(data_dir, fast_path=fast_path)) as server:
        answer, open_after = await exchange(server.port, head)
    assert answer is not None and answer.status_line.split()[1] in ("400", "431"), answer
    assert answer.headers["content-type"].startswith("application/json")
    assert set(json.loads(answer.body)) == {"error", "detail"}
    assert MARK not in answer.body and b"\\x" not in answer.body, answer.body
    assert not open_after
    assert _errors_logged(caplog) == []


async def test_client_gone_mid_answer_logs_no_error(data_dir: Path, make_config, start_edge,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    async with start_edge(make_config(data_dir, fast_path=True, socket_send_buffer=65536)) as server:
        for target in (SEG, "/videos/vid-1/240p/90.m4s?x=1"):  # the fast path, then aiohttp's route
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                await reader.readuntil(b"\r\n\r\n")
                writer.transport.abort()  # gone with megabytes unsent
        # The edge still answers, and noticed nothing worth an ERROR.
        answer, _ = await exchange(server.port, f"GET {PLAYLIST} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert answer is not None and answer.status_line == "HTTP/1.1 200 OK"
    assert _errors_logged(caplog) == []
