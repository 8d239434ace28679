"""The broker's durable journal: every accepted job and each change of its state.

An accepted job is written (and fsynced) before the submit is acknowledged, so it survives a
``kill -9`` of the broker and is dispatched again after restart. :class:`Journal` is the small
interface the broker needs; :class:`SqliteJournal` serves a single node (SQLite in WAL mode,
``synchronous=FULL``: a commit is on disk when it returns). A fleet's failover broker can put the
same records in Redis by implementing the same five methods.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import msgspec

from streamgate.common.media import TranscodeResult
from streamgate.common.protocol import TERMINAL_STATES, JobInfo, JobSpec, JobState
from streamgate.common.sqlite import connect


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
        """Durably write ``record`` (insert or replace by job id) before returning."""

    async def totals(self) -> Totals:
        """Outcome counters over every journaled job (survive restarts)."""

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

    async def save(self, record: JobRecord) -> None:
        record.updated_at = time.time()
        self._db.execute(
            "INSERT INTO jobs (job_id, state, elapsed_s, updated_at, record) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(job_id) DO UPDATE SET state = excluded.state,"
            " elapsed_s = excluded.elapsed_s, updated_at = excluded.updated_at, record = excluded.record",
            (record.job_id, record.state, record.elapsed_s, record.updated_at, self._encode(record)),
        )

    async def totals(self) -> Totals:
        done, seconds = self._db.execute(
            "SELECT count(*), coalesce(sum(elapsed_s), 0) FROM jobs WHERE state = 'done'"
        ).fetchone()
        (failed,) = self._db.execute("SELECT count(*) FROM jobs WHERE state = 'failed'").fetchone()
        return Totals(done=done, failed=failed, done_seconds=seconds)

    async def close(self) -> None:
        self._db.close()
