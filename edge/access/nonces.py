"""Single-use, expiring Sign-In with Ethereum nonces: SQLite on one node, Redis in a fleet."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Protocol

from streamgate.common.redis_keys import DEFAULT_PREFIX
from streamgate.common.sqlite import SqliteThread


class NonceStore(Protocol):
    async def issue(self, nonce: str, ttl_s: float) -> None: ...
    async def take(self, nonce: str) -> bool:
        """True once for a live nonce: taking it is what makes it single use."""
    async def close(self) -> None: ...


class SqliteNonceStore:
    """Single node: rows in the edge's SQLite file, on the store's own thread (common/sqlite.py)."""

    def __init__(self, path: Path) -> None:
        self._db = SqliteThread(path, name="sqlite-nonces")
        self._db.call_sync(lambda db: db.execute(
            "CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, expires_at REAL NOT NULL)"))

    async def issue(self, nonce: str, ttl_s: float) -> None:
        def issue(db: sqlite3.Connection) -> None:
            now = time.time()
            db.execute("DELETE FROM nonces WHERE expires_at < ?", (now,))
            db.execute("INSERT INTO nonces VALUES (?, ?)", (nonce, now + ttl_s))

        await self._db.call(issue)

    async def take(self, nonce: str) -> bool:
        # One DELETE: atomic across the edge processes sharing the file.
        return await self._db.rowcount("DELETE FROM nonces WHERE nonce = ? AND expires_at >= ?",
                                       (nonce, time.time())) > 0

    async def close(self) -> None:
        await self._db.close()


class RedisNonceStore:
    def __init__(self, redis: Any, prefix: str = DEFAULT_PREFIX) -> None:
        self._r = redis
        self._p = prefix

    async def issue(self, nonce: str, ttl_s: float) -> None:
        await self._r.set(f"{self._p}nonce:{nonce}", b"1", px=max(1, int(ttl_s * 1000)))

    async def take(self, nonce: str) -> bool:
        return bool(await self._r.delete(f"{self._p}nonce:{nonce}"))

    async def close(self) -> None:
        """The Redis client belongs to the app."""
