"""The sha256 of an upload's source, computed as its bytes arrive instead of re-read at completion.

Each edge process keeps, per upload, a running sha256 of the bytes up to an *acknowledged*
offset. A PATCH that starts at exactly that offset continues from a copy of it and keeps the
result only once its bytes are durable; completion takes the digest when the running hash covers
the whole upload. Bytes below an acknowledged offset never change and offsets only grow, so a
matching offset means the same bytes. Anything else -- a PATCH handled by another edge process, a
restart, a resumed upload -- misses, and completion reads the source once as before: the hash
state is never persisted (hashlib cannot export it), it is only a shortcut.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

from aiohttp import web

# Uploads followed at once per process; the least recently used is dropped (it is re-read then).
LIMIT = 4096


class SourceHashes:
    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        self._running: OrderedDict[str, tuple[int, Any]] = OrderedDict()

    def resume(self, upload_id: str, offset: int) -> Any | None:
        """A hasher over the first ``offset`` bytes to continue, or None (unknown here)."""
        if offset == 0:
            return hashlib.sha256()
        entry = self._running.get(upload_id)
        if entry is None or entry[0] != offset:
            return None
        self._running.move_to_end(upload_id)
        return entry[1].copy()

    def keep(self, upload_id: str, offset: int, hasher: Any) -> None:
        """``hasher`` covers the upload's first ``offset`` bytes, all durable."""
        self._running[upload_id] = (offset, hasher)
        self._running.move_to_end(upload_id)
        while len(self._running) > self._limit:
            self._running.popitem(last=False)

    def digest(self, upload_id: str, length: int) -> str | None:
        entry = self._running.get(upload_id)
        return entry[1].hexdigest() if entry is not None and entry[0] == length else None

    def forget(self, upload_id: str) -> None:
        self._running.pop(upload_id, None)


SOURCE_HASHES = web.AppKey("source_hashes", SourceHashes)


def of(app: web.Application) -> SourceHashes | None:
    """The app's running hashes (none on a bare app without the tus routes)."""
    return app.get(SOURCE_HASHES)
