"""The SQLite stores never block the event loop: a statement waiting for another process's lock
leaves the loop free (issue 14: the catalog, upload state and nonces ran inline)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from streamgate.common.sqlite import connect
from streamgate.edge.access.nonces import SqliteNonceStore
from streamgate.edge.catalog import SqliteCatalog, Video
from streamgate.edge.intake.state import SqliteUploadStore, Upload

HOLD_S = 1.0


def _calls(path: Path, tmp: Path) -> dict[str, tuple[Any, Callable[[Any], Awaitable[Any]]]]:
    now = time.time()
    return {
        "catalog": (SqliteCatalog(path), lambda s: s.create(Video(id="v1", created_at=now))),
        "uploads": (SqliteUploadStore(path, tmp / "locks"),
                    lambda s: s.create(Upload(id="u1", length=5, created_at=now, expires_at=now + 60))),
        "nonces": (SqliteNonceStore(path), lambda s: s.issue("n1", 60.0)),
    }


@pytest.mark.parametrize("store", ["catalog", "uploads", "nonces"])
async def test_a_write_waiting_for_the_file_lock_leaves_the_loop_running(tmp_path: Path, store: str) -> None:
    path = tmp_path / "edge.sqlite3"
    made = _calls(path, tmp_path)
    target, write = made[store]
    # Another process's writer (here: another connection) holds the write lock for HOLD_S.
    holder = connect(path)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(HOLD_S, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        gaps: list[float] = []
        writing = asyncio.ensure_future(write(target))
        last = time.monotonic()
        while not writing.done():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
        await writing
        # The write waited for the lock (it did not fail), and the loop ticked all along.
        assert sum(gaps) >= HOLD_S * 0.8
        assert max(gaps) < HOLD_S / 2, f"the event loop stalled {max(gaps):.2f}s behind SQLite"
    finally:
        release.join()
        holder.close()
        for other, _ in made.values():
            await other.close()


async def test_transactions_of_concurrent_updates_never_interleave(tmp_path: Path) -> None:
    catalog = SqliteCatalog(tmp_path / "edge.sqlite3")
    try:
        await catalog.create(Video(id="v", created_at=1.0))
        # 50 concurrent guarded updates: one thread, one transaction at a time, none lost or failed.
        results = await asyncio.gather(*(catalog.update("v", {"priority": i}) for i in range(50)))
        assert all(r is not None for r in results)
        got = await catalog.get("v")
        assert got is not None and got.priority == 49
    finally:
        await catalog.close()


def test_the_store_thread_owns_its_connection(tmp_path: Path) -> None:
    catalog = SqliteCatalog(tmp_path / "edge.sqlite3")
    names = asyncio.run(_thread_of(catalog))
    assert names[0] != threading.current_thread().name and names[0].startswith("sqlite-catalog")
    assert len(set(names)) == 1


async def _thread_of(catalog: SqliteCatalog) -> list[str]:
    try:
        return [await catalog._db.call(lambda db: threading.current_thread().name) for _ in range(3)]
    finally:
        await catalog.close()


def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    async def go() -> None:
        catalog = SqliteCatalog(tmp_path / "edge.sqlite3")
        await catalog.close()
        with pytest.raises((RuntimeError, sqlite3.ProgrammingError)):
            await catalog.get("x")

    asyncio.run(go())
