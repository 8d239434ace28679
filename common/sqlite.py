"""The one way StreamGate opens a SQLite file: the broker journal, the catalog, upload state, nonces.

WAL, so several processes (the edge's copies, ``streamgate run``'s roles) share one file and
readers never block the writer; ``synchronous=FULL``, so a commit is on disk when it returns (an
acknowledged upload offset or an accepted job survives a power cut); and a ``busy_timeout``, so a
writer that finds the file locked by another process waits for it instead of failing at once with
"database is locked" (the journal lacked it: issue 11).
"""

from __future__ import annotations

import asyncio
import errno
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

BUSY_TIMEOUT_S = 10.0


def connect(path: Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S, foreign_keys: bool = True) -> sqlite3.Connection:
    """Open (creating its folder) ``path`` in autocommit mode, shareable across the event loop's threads.

    ``isolation_level=None``: callers write single statements or their own ``BEGIN IMMEDIATE``
    transactions; Python's implicit transactions would hold locks between statements.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    # Also set by timeout= above; stated here so it holds whatever the driver's default becomes.
    db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    if foreign_keys:
        db.execute("PRAGMA foreign_keys=ON")
    return db


T = TypeVar("T")


class StoreFull(OSError):
    """A SQLite write failed because the disk is full (SQLITE_FULL): an ENOSPC like any other."""


def is_full(exc: BaseException) -> bool:
    """``exc`` is SQLite's SQLITE_FULL: the file's disk has no room for the write."""
    return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def _translated(fn: Callable[..., T], db: sqlite3.Connection, *args: Any) -> T:
    try:
        return fn(db, *args)
    except sqlite3.OperationalError as exc:
        if is_full(exc):
            raise StoreFull(errno.ENOSPC, f"SQLite: {exc}") from exc
        raise


def transaction(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(db)`` in one ``BEGIN IMMEDIATE`` transaction, SQLITE_FULL raised as :class:`StoreFull`.

    SQLite may roll a transaction back by itself on SQLITE_FULL (sqlite.org/lang_transaction.html),
    and COMMIT is where a WAL write meets a full disk: the ROLLBACK is issued only while a
    transaction is still open, so its "no transaction is active" never hides the real error.
    """
    def run(db: sqlite3.Connection) -> T:
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result

    return _translated(run, db)


def write(db: sqlite3.Connection, sql: str, args: Any = ()) -> sqlite3.Cursor:
    """One autocommitted statement, SQLITE_FULL raised as :class:`StoreFull`."""
    return _translated(lambda db: db.execute(sql, args), db)


class SqliteThread:
    """One SQLite connection owned by one dedicated thread; the event loop only awaits its results.

    A statement can wait up to the busy timeout for another process's write lock, and a FULL-synced
    commit waits for the disk: run on the event loop, either stalls every request of the process.
    Here each store's calls queue on its own thread, in order, so a store's transactions never
    interleave (one function is one transaction) and the connection never changes threads.
    """

    def __init__(self, path: Path, *, name: str = "sqlite", **options: Any) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._db = self._pool.submit(connect, path, **options).result()

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` on the store's thread and wait: for set-up, before a loop runs."""
        return self._pool.submit(_translated, fn, self._db, *args).result()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` on the store's thread; a cancelled caller lets it finish.

        Shielded: a write once submitted always runs. A PATCH cancelled by its client's
        disconnect saves its acknowledged offset on the way out, and that save must not be
        dropped from the queue by a second cancellation.
        """
        return await asyncio.shield(asyncio.wrap_future(self._pool.submit(_translated, fn, self._db, *args)))

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """One statement; its rows (fetched on the thread)."""
        return await self.call(lambda db: db.execute(sql, args).fetchall())

    async def rowcount(self, sql: str, args: Sequence[Any] = ()) -> int:
        return await self.call(lambda db: db.execute(sql, args).rowcount)

    async def close(self) -> None:
        await self.call(lambda db: db.close())
        self._pool.shutdown(wait=True)
