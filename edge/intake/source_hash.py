"""The sha256 of an upload's source, computed as its bytes are acknowledged instead of read back
whole at completion.

Each edge process keeps, per upload, a running sha256 of the bytes up to an *acknowledged*
offset. Once a PATCH's bytes are durable and its offset saved, ``advance`` hashes them in the
background -- read back from the partial file while they are still in the page cache, off the
event loop and off the PATCH's answer, so the hashing overlaps the next PATCH's transfer and
flush. Completion awaits what is left and takes the digest. Bytes below an acknowledged offset
never change and offsets only grow, so a running hash that reached exactly the offset a PATCH
starts from covers the same bytes. Anything else -- a PATCH handled by another edge process, a
restart, a resumed upload -- misses, and completion reads the source once as before: the hash
state is never persisted (hashlib cannot export it), it is only a shortcut.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

from aiohttp import web

# Uploads followed at once per process; the least recently used is dropped (it is re-read then).
LIMIT = 4096
_READ = 8 * 2**20


class _Running:
    def __init__(self, hasher: Any) -> None:
        self.hasher = hasher
        self.offset = 0  # what the hasher covers once ``pending`` is done
        self.pending: asyncio.Future[None] | None = None


def hash_fd_range(fd: int, start: int, end: int, hasher: Any) -> None:
    """Feed bytes [start, end) of the open file ``fd`` to ``hasher`` (pread: no shared offset)."""
    at = start
    while at < end:
        block = os.pread(fd, min(_READ, end - at), at)
        if not block:
            raise OSError(f"short read at {at} of {end}")
        hasher.update(block)
        at += len(block)


def _hash_range(path: Path, start: int, end: int, hasher: Any) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        hash_fd_range(fd, start, end, hasher)
    except OSError as exc:
        raise OSError(f"{path}: {exc}") from None
    finally:
        os.close(fd)


class SourceHashes:
    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        self._running: OrderedDict[str, _Running] = OrderedDict()

    def advance(self, upload_id: str, path: Path, start: int, end: int) -> None:
        """Bytes ``start``..``end`` of the upload's partial file ``path`` are acknowledged: hash
        them in the background if the running hash reaches ``start``, else forget it."""
        entry = self._running.get(upload_id)
        if start == 0:
            self.forget(upload_id)
            entry = _Running(hashlib.sha256())
            self._running[upload_id] = entry
        elif entry is None or entry.offset != start:
            self.forget(upload_id)
            return
        self._running.move_to_end(upload_id)
        previous = entry.pending
        entry.offset = end
        entry.pending = asyncio.ensure_future(self._extend(entry, previous, path, start, end))
        while len(self._running) > self._limit:
            self._drop(self._running.popitem(last=False)[1])

    @staticmethod
    async def _extend(entry: _Running, previous: asyncio.Future[None] | None, path: Path,
                      start: int, end: int) -> None:
        if previous is not None:
            await previous  # in order; a failed step fails the ones after it
        await asyncio.to_thread(_hash_range, path, start, end, entry.hasher)

    def keep(self, upload_id: str, length: int, hasher: Any) -> None:
        """``hasher`` covers the upload's ``length`` bytes already (a concatenation's join)."""
        self.forget(upload_id)
        entry = _Running(hasher)
        entry.offset = length
        self._running[upload_id] = entry

    async def digest(self, upload_id: str, length: int) -> str | None:
        """The hex sha256 of the upload's ``length`` bytes, or None if it is not known here."""
        entry = self._running.get(upload_id)
        if entry is None or entry.offset != length:
            return None
        if entry.pending is not None:
            try:
                await asyncio.shield(entry.pending)
            except OSError:  # the file went away or failed: read the source instead
                return None
        return str(entry.hasher.hexdigest())

    def forget(self, upload_id: str) -> None:
        entry = self._running.pop(upload_id, None)
        if entry is not None:
            self._drop(entry)

    @staticmethod
    def _drop(entry: _Running) -> None:
        if entry.pending is not None:
            # Its outcome no longer matters; retrieved so a failure is not reported as lost.
            entry.pending.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def close(self, _app: web.Application | None = None) -> None:
        """Let the background steps finish (a thread cannot be stopped) and drop everything."""
        pending = [e.pending for e in self._running.values() if e.pending is not None]
        self._running.clear()
        for future in pending:
            with contextlib.suppress(Exception):
                await future


SOURCE_HASHES = web.AppKey("source_hashes", SourceHashes)


def of(app: web.Application) -> SourceHashes | None:
    """The app's running hashes (none on a bare app without the tus routes)."""
    return app.get(SOURCE_HASHES)
