"""The broker on a journal whose disk is full (issue 14): it never crashes.

A submit it cannot journal is refused with the reason (nothing half-accepted); a job already
accepted keeps going, its outcome held in memory and written once space returns; the journal file
stays intact. The journal sits on a small tmpfs the test mounts (root).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import async_wait_until, fill_disk, journaled_state, mounted_tmpfs

from streamgate.common.media import TranscodeResult
from streamgate.common.protocol import Assign, Done, JobDone

pytestmark = pytest.mark.usefixtures("no_leaks")

RESULT = TranscodeResult(duration_s=1.0, renditions=[], frames=15)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs needs root (running as uid {os.geteuid()})")
    with mounted_tmpfs(tmp_path / "journal-disk", "4m") as mount:
        yield mount


def fill(mount: Path) -> Path:
    """Leave no free block on ``mount`` (its files stay as they are)."""
    filler = fill_disk(mount)
    assert shutil.disk_usage(mount).free < 64 * 1024
    return filler


async def test_a_full_journal_refuses_submits_holds_outcomes_and_recovers(
        farm, small_disk, start_broker, client, events, raw_worker) -> None:
    journal = small_disk / "journal.sqlite3"
    farm.configure(broker={"journal_path": str(journal)})
    running = await start_broker()
    log = await events()
    accepted = farm.job("/src-a.mp4")
    assert (await client.submit(accepted)).accepted
    worker = raw_worker("raw-full")
    await worker.ready()
    assign = await worker.expect(Assign)
    assert assign.job.job_id == accepted.job_id

    filler = fill(small_disk)
    # A new job cannot be made durable: refused with the reason, never half-accepted.
    late = farm.job("/src-b.mp4")
    refused = await client.submit(late)
    assert not refused.accepted and refused.reason.startswith("no space left on device"), refused
    assert refused.retry_after_s > 0
    assert await client.job(late.job_id) is None
    # The job in flight completes: its outcome is published and answered from memory.
    await worker.send(Done(job_id=accepted.job_id, attempt=assign.attempt, result=RESULT))
    await log.wait(JobDone, accepted.job_id)
    info = await client.job(accepted.job_id)
    assert info is not None and info.state == "done"
    stats = await client.stats()
    assert stats.total_tasks_processed == 1
    assert not running.task.done()  # the broker serves on
    assert journaled_state(journal, accepted.job_id) == "running"  # not yet on disk

    # Space returns: the held outcome is written, the refused job is accepted, no restart.
    filler.unlink()
    async def written() -> bool:
        return journaled_state(journal, accepted.job_id) == "done"

    await async_wait_until(written, timeout=10, what="the held outcome to reach the journal")
    assert (await client.submit(late)).accepted
    assert journaled_state(journal, late.job_id) == "queued"
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    assert not running.task.done()
