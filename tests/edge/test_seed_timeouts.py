"""The seed's server.read_timeout / write_timeout, honoured by the edge over edge.client_timeout."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from streamgate.common.units import Seconds

VIDEO_ID = "vid-1"  # the video of the media_template fixture
V = f"/videos/{VIDEO_ID}"
FAST = pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "aiohttp"])


def with_timeouts(config: Any, read_s: float = 0, write_s: float = 0) -> Any:
    config.server.read_timeout = Seconds(read_s)
    config.server.write_timeout = Seconds(write_s)
    return config


@FAST
async def test_read_timeout_closes_an_idle_connection_before_client_timeout(
        fast_path: bool, data_dir: Path, make_config, start_edge) -> None:
    config = with_timeouts(make_config(data_dir, fast_path=fast_path, client_timeout=60), read_s=1)
    async with start_edge(config) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = time.monotonic()
        # An answered request, then silence: the keep-alive connection is closed after read_timeout.
        writer.write(f"HEAD {V}/master.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 20)
        elapsed = time.monotonic() - started
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
        assert elapsed < 15, f"closed after {elapsed:.1f}s: read_timeout (1s) not applied over client_timeout (60s)"


async def test_write_timeout_cuts_a_stalled_reader_before_client_timeout(
        data_dir: Path, make_config, start_edge) -> None:
    size = (data_dir / "media" / VIDEO_ID / "240p" / "90.m4s").stat().st_size
    config = with_timeouts(make_config(data_dir, client_timeout=60, socket_send_buffer=65536), write_s=1)
    request = f"GET {V}/240p/90.m4s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()

    def stalled_download(port: int) -> tuple[int, float]:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            s.connect(("127.0.0.1", port))
            s.sendall(request)
            got = len(s.recv(65536))
            stalled_at = time.monotonic()
            # Stop reading: the edge's write cannot move. It must give up after write_timeout,
            # long before the 60 s client_timeout; poll for the reset it leaves behind.
            deadline = stalled_at + 20
            while time.monotonic() < deadline:
                time.sleep(0.5)
                info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
                if info[0] in (7, 8):  # TCP_CLOSE, TCP_CLOSE_WAIT: the edge closed its side
                    break
            s.settimeout(5)
            try:
                while chunk := s.recv(262144):
                    got += len(chunk)
            except (ConnectionResetError, TimeoutError):
                pass
            return got, time.monotonic() - stalled_at

    async with start_edge(config) as server:
        got, elapsed = await asyncio.to_thread(stalled_download, server.port)
    assert got < size, "a reader that stops is cut off after write_timeout"
    assert elapsed < 25, f"cut after {elapsed:.1f}s"
