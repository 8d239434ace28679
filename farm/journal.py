"""The broker's durable journal: every accepted job and each change of its state.

An accepted job is written (and fsynced) before the submit is acknowledged, so it survives a
``kill -9`` of the broker and is dispatched again after restart. :class:`Journal` is the small
interface the broker needs; :class:`SqliteJournal` serves a single node (SQLite in WAL mode,
``synchronous=FULL``: a commit is on disk when it returns). A fleet's failover broker can put the
same records in Redis by implementing the same five methods.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Protocol

import msgspec

from streamgate.common.media import TranscodeResult
from streamgate.common.protocol import TERMINAL_STATES, JobInfo, JobSpec, JobState
from streamgate.common.sqlite import connect, transaction, write


class JobRecord(msgspec.Struct, kw_only=True):
    """The broker's durable view of one job (progress is live only, never journaled)."""

    spec: JobSpec
    state: JobState = "queued"
    attempts: int = 0  # runs started; the lease of the current run is (job_id, attempts)
    failures: int = 0  # runs that failed or lost their lease; over broker.max_retries: dead-letter
    reason: str = ""
    worker: str = ""
    result: TranscodeResult | None = None
    elapsed_s: float = 0.0
    updated_at: float = 0.0

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def info(self, *, progress: float = 0.0, fps: float = 0.0, eta_s: float | None = None) -> JobInfo:
        return JobInfo(
            job_id=self.spec.job_id, state=self.state, priority=self.spec.priority,
            attempts=self.attempts, progress=1.0 if self.state == "done" else progress, fps=fps,
            eta_s=eta_s, reason=self.reason, worker=self.worker,
            submitted_at=self.spec.submitted_at, updated_at=self.updated_at, result=self.result,
        )


class Totals(msgspec.Struct, kw_only=True):
    done: int = 0
    failed: int = 0
    done_seconds: float = 0.0


class Journal(Protocol):
    async def load_active(self) -> list[JobRecord]:
        """Records not yet terminal (queued or running), oldest first."""

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def save(self, record: JobRecord) -> None:
        """Durably write ``record`` (insert or replace by job id) before returning; raises
        ``common.sqlite.StoreFull`` (an ENOSPC OSError) when the disk has no room for it."""

    async def save_many(self, records: list[JobRecord]) -> None:
        """Durably write every one of ``records`` together (one commit) before returning."""

    async def totals(self) -> Totals:
        """Outcome counters over every journaled job (survive restarts and pruning)."""

    async def prune(self, before: float, *, limit: int = 1000) -> int:
        """Forget up to ``limit`` finished jobs last changed before ``before`` (unix time); their
        outcomes stay in :meth:`totals`. Queued and running jobs are never pruned. Returns how
        many were dropped."""

    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id     TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    elapsed_s  REAL NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    record     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(updated_at) WHERE state NOT IN ('queued', 'running');
-- The outcomes of pruned jobs, so totals() still counts every job ever journaled.
CREATE TABLE IF NOT EXISTS pruned (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    done         INTEGER NOT NULL,
    failed       INTEGER NOT NULL,
    done_seconds REAL NOT NULL
);
INSERT OR IGNORE INTO pruned VALUES (1, 0, 0, 0);
"""


class SqliteJournal:
    """SQLite in WAL mode; each save is one fsynced transaction (a few ms: state changes only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = connect(path)
        self._db.executescript(_SCHEMA)
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(JobRecord).decode

    async def load_active(self) -> list[JobRecord]:
        rows = self._db.execute(
            "SELECT record FROM jobs WHERE state IN ('queued', 'running') ORDER BY rowid"
        ).fetchall()
        return [self._decode(row[0]) for row in rows]

    async def get(self, job_id: str) -> JobRecord | None:
        row = self._db.execute("SELECT record FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return self._decode(row[0]) if row else None

    _UPSERT = (
        "INSERT INTO jobs (job_id, state, elapsed_s, updated_at, record) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT(job_id) DO UPDATE SET state = excluded.state,"
        " elapsed_s = excluded.elapsed_s, updated_at = excluded.updated_at, record = excluded.record")

    def _row(self, record: JobRecord) -> tuple[str, str, float, float, bytes]:
        record.updated_at = time.time()
        return (record.job_id, record.state, record.elapsed_s, record.updated_at, self._encode(record))

    async def save(self, record: JobRecord) -> None:
        write(self._db, self._UPSERT, self._row(record))

    async def save_many(self, records: list[JobRecord]) -> None:
        # One transaction: with synchronous=FULL its COMMIT is the batch's only fsync.
        rows = [self._row(record) for record in records]
        transaction(self._db, lambda db: db.executemany(self._UPSERT, rows))

    async def totals(self) -> Totals:
        done, seconds = self._db.execute(
            "SELECT count(*), coalesce(sum(elapsed_s), 0) FROM jobs WHERE state = 'done'"
        ).fetchone()
        (failed,) = self._db.execute("SELECT count(*) FROM jobs WHERE state = 'failed'").fetchone()
        p_done, p_failed, p_seconds = self._db.execute(
            "SELECT done, failed, done_seconds FROM pruned").fetchone()
        return Totals(done=done + p_done, failed=failed + p_failed, done_seconds=seconds + p_seconds)

    async def prune(self, before: float, *, limit: int = 1000) -> int:
        # One transaction: the rows go and their outcomes move into ``pruned`` together.
        def batch(db: sqlite3.Connection) -> int:
            db.execute(
                "CREATE TEMP TABLE IF NOT EXISTS prune_batch (job_id TEXT PRIMARY KEY, state TEXT, elapsed_s REAL)")
            db.execute("DELETE FROM prune_batch")
            db.execute(
                "INSERT INTO prune_batch SELECT job_id, state, elapsed_s FROM jobs"
                " WHERE state NOT IN ('queued', 'running') AND updated_at < ? ORDER BY updated_at LIMIT ?",
                (before, limit))
            db.execute(
                "UPDATE pruned SET"
                " done = done + (SELECT count(*) FROM prune_batch WHERE state = 'done'),"
                " failed = failed + (SELECT count(*) FROM prune_batch WHERE state = 'failed'),"
                " done_seconds = done_seconds + (SELECT coalesce(sum(elapsed_s), 0) FROM prune_batch"
                " WHERE state = 'done')")
            count: int = db.execute("DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM prune_batch)").rowcount
            return count

        return transaction(self._db, batch)

    async def close(self) -> None:
        self._db.close()
