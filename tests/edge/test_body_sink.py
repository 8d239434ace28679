"""edge/intake/body_sink.py: a PATCH body written and hashed in order off the loop, its write
errors surfaced, and nothing left running on the descriptor once settled."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from streamgate.edge.intake.body_sink import BodySink


async def test_chunks_land_in_order_at_the_offset_and_are_hashed(tmp_path: Path) -> None:
    path = tmp_path / "u.part"
    await asyncio.to_thread(path.write_bytes, b"HEAD")
    chunks = [hashlib.shake_256(i.to_bytes(4, "big")).digest(1 + i * 9973) for i in range(300)]
    fd = os.open(path, os.O_WRONLY)
    hasher = hashlib.sha256()
    sink = BodySink(fd, 4, [hasher])
    try:
        for chunk in chunks:
            await sink.feed(chunk)
        await sink.sync()
    finally:
        await sink.settle()
        os.close(fd)
    body = b"".join(chunks)
    assert sink.written == sink.queued == 4 + len(body)
    assert await asyncio.to_thread(path.read_bytes) == b"HEAD" + body
    assert hasher.digest() == hashlib.sha256(body).digest()


async def test_a_failed_write_surfaces_and_counts_as_not_written(tmp_path: Path) -> None:
    path = tmp_path / "ro.part"
    await asyncio.to_thread(path.write_bytes, b"")
    fd = os.open(path, os.O_RDONLY)  # every pwritev fails (EBADF)
    sink = BodySink(fd, 0, [])
    try:
        with pytest.raises(OSError):
            await sink.feed(b"x" * 100_000)
            await sink.drain()
        assert sink.written == 0
    finally:
        await sink.settle()
        os.close(fd)


async def test_settle_waits_for_the_batch_even_when_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "c.part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    sink = BodySink(fd, 0, [hashlib.sha256()])
    await sink.feed(os.urandom(8 * 2**20))  # a batch in flight in its thread

    async def settle() -> None:
        await sink.settle()

    task = asyncio.create_task(settle())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The cancellation was held until the batch finished: its bytes are all there.
    assert os.fstat(fd).st_size == 8 * 2**20
    os.close(fd)
