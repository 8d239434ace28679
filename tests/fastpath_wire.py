"""Raw-socket helpers for the fast-path tests: send exact bytes, read responses as a client would."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class Answer:
    status_line: str
    headers: dict[str, str]  # lower-cased names; the last value wins
    body: bytes


async def read_answer(reader: asyncio.StreamReader, head_only: bool = False, timeout: float = 20) -> Answer | None:
    """One response, or None when the server closed before sending one."""
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except asyncio.IncompleteReadError:
        return None
    lines = raw.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = b""
    if not head_only and "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
    return Answer(lines[0], headers, body)


PROBE = b"GET /videos/vid-1/poster.jpg HTTP/1.1\r\nHost: probe\r\n\r\n"


async def still_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float = 20) -> bool:
    """Whether the connection still serves: a second request is answered (True) or the server closed."""
    try:
        writer.write(PROBE)
        await writer.drain()
        answer = await read_answer(reader, timeout=timeout)
    except (ConnectionResetError, BrokenPipeError):
        return False
    return answer is not None


async def exchange(port: int, data: bytes, head_only: bool = False) -> tuple[Answer | None, bool]:
    """Send ``data`` on a fresh connection; the first answer and whether the connection then served on."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        try:
            answer = await read_answer(reader, head_only)
        except ConnectionResetError:
            answer = None
        if answer is None:
            return None, False
        return answer, await still_open(reader, writer)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
