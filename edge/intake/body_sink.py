"""A PATCH body's bytes written, hashed and flushed off the event loop (storage.backend: disk).

The event loop only receives: each batch of received chunks goes to a thread that updates the
hashes (hashlib releases the GIL on big buffers) and writes it with ``pwritev`` at its offset,
while the loop reads the next batch from the socket. Batches are adaptive: a batch is handed over
as soon as the previous one is done, so a slow body is written as it arrives and a fast one in
large batches. One batch is in flight at a time, so the writes and the hash updates keep their order.

Writeback starts early: each batch, once written, is queued for writeback
(``sync_file_range``, common/writeback.py), so the disk works while the body still arrives and
the one ``fdatasync`` that makes the PATCH durable at the end finds little left to write -- one
disk barrier per PATCH, as before. Nothing here acknowledges anything: ``sync`` is the barrier
the caller saves the offset after.

No batch is ever left running when the sink is settled: every exit of a PATCH waits for it (even
when cancelled) before it cuts the file, closes the descriptor or releases the upload's lock, so
a later PATCH never races a stale write.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from streamgate.common import writeback

# A batch is handed over at once when the thread is idle; while it is busy, received chunks queue
# up to this many bytes before the loop waits for it (the memory a PATCH may hold).
MAX_QUEUED = 16 * 2**20


def _write_at(fd: int, pieces: list[bytes], at: int) -> None:
    views = [memoryview(p) for p in pieces]
    while views:
        n = os.pwritev(fd, views, at)
        at += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


class BodySink:
    """Writes a PATCH's body at ``start`` of ``fd`` and feeds ``hashers`` with it, in order."""

    def __init__(self, fd: int, start: int, hashers: list[Any]) -> None:
        self.fd = fd
        self.hashers = hashers
        self.queued = start  # offset after the bytes handed over (queued or written)
        self.written = start  # offset after the bytes written (and hashed)
        self._queue: list[bytes] = []
        self._queue_bytes = 0
        self._batch: asyncio.Future[None] | None = None
        self._batch_bytes = 0

    def _work(self, pieces: list[bytes], at: int) -> None:
        for hasher in self.hashers:
            for piece in pieces:
                hasher.update(piece)
        _write_at(self.fd, pieces, at)
        writeback.start(self.fd, at, sum(map(len, pieces)))

    async def feed(self, chunk: bytes) -> None:
        """Queue a received chunk; hand the queue over when the thread is free (OSError from the
        previous batch surfaces here)."""
        self._queue.append(chunk)
        self._queue_bytes += len(chunk)
        if self._batch is not None and not self._batch.done() and self._queue_bytes < MAX_QUEUED:
            return
        await self._wait_batch()
        self._start_batch()

    def _start_batch(self) -> None:
        if not self._queue:
            return
        pieces, at = self._queue, self.queued
        self._queue, self._batch_bytes = [], self._queue_bytes
        self.queued += self._queue_bytes
        self._queue_bytes = 0
        self._batch = asyncio.ensure_future(asyncio.to_thread(self._work, pieces, at))

    async def _wait_batch(self) -> None:
        if self._batch is None:
            return
        batch, self._batch = self._batch, None
        await batch  # an OSError (disk full) propagates; the bytes it carried count as not written
        self.written += self._batch_bytes

    async def drain(self) -> None:
        """Every received byte written (and hashed)."""
        await self._wait_batch()
        self._start_batch()
        await self._wait_batch()

    async def sync(self) -> None:
        """Every received byte written and durable (``fdatasync``: the data and the size that
        reaches it, all a reader after a crash needs)."""
        await self.drain()
        # Tracked like a batch: settle waits for it before the descriptor may close.
        self._batch, self._batch_bytes = asyncio.ensure_future(asyncio.to_thread(os.fdatasync, self.fd)), 0
        await self._wait_batch()

    async def settle(self) -> None:
        """Wait, whatever happens, until no batch runs on the descriptor; errors dropped (the
        caller is on an error path already). Cancellation is held until then and re-raised."""
        cancelled = False
        task = self._batch
        while task is not None and not task.done():
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                cancelled = True
        if task is not None and not task.cancelled():
            task.exception()  # retrieved: a failed background write is not "never retrieved"
        self._batch = None
        self._queue, self._queue_bytes = [], 0
        if cancelled:
            raise asyncio.CancelledError
