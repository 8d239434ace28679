"""The SQLite opener: WAL, durable commits, and a writer that waits for a locked file."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from streamgate.common.sqlite import connect


def test_the_opener_creates_the_folder_and_sets_the_pragmas(tmp_path: Path) -> None:
    db = connect(tmp_path / "deep" / "er" / "state.sqlite3", busy_timeout_s=3)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 3000
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert db.isolation_level is None  # autocommit: no implicit transaction holds a lock
    finally:
        db.close()


def test_a_second_writer_waits_for_the_lock_instead_of_failing(tmp_path: Path) -> None:
    path = tmp_path / "contended.sqlite3"
    holder, waiter = connect(path), connect(path, busy_timeout_s=30)
    holder.execute("CREATE TABLE t (n INTEGER)")
    # Without a busy timeout the same write fails at once: what the journal did before the opener.
    impatient = sqlite3.connect(path, isolation_level=None, timeout=0)
    started, done = threading.Event(), threading.Event()
    outcome: list[object] = []

    def write() -> None:
        started.set()
        try:
            waiter.execute("INSERT INTO t VALUES (2)")
            outcome.append(time.monotonic())
        except sqlite3.Error as exc:  # pragma: no cover - the failure this test guards against
            outcome.append(exc)
        done.set()

    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            impatient.execute("INSERT INTO t VALUES (3)")
        thread = threading.Thread(target=write)
        thread.start()
        assert started.wait(30)
        # Still blocked while the holder keeps its transaction open (a bounded wait, not a sleep).
        assert not done.wait(0.5), f"the second writer did not wait: {outcome}"
        committed_at = time.monotonic()
        holder.execute("COMMIT")
        assert done.wait(30), "the second writer never finished"
        thread.join(30)
        (finished,) = outcome
        assert isinstance(finished, float), f"the second writer failed: {finished!r}"
        assert finished >= committed_at
        assert sorted(r[0] for r in holder.execute("SELECT n FROM t")) == [1, 2]
    finally:
        impatient.close()
        waiter.close()
        holder.close()
