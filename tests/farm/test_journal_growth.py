"""The journal stays bounded (broker.journal_retention) and group commit never loses an
acknowledged submit (issue 18, goal 6)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from support import async_wait_until

from streamgate.common.protocol import JobSpec
from streamgate.farm.journal import JobRecord, SqliteJournal


def _record(job_id: str, state: str, elapsed_s: float = 0.0) -> JobRecord:
    spec = JobSpec(job_id=job_id, source=f"/src/{job_id}.mp4", out_dir=f"/media/{job_id}")
    return JobRecord(spec=spec, state=state, elapsed_s=elapsed_s)  # type: ignore[arg-type]


OLD = ["old-done", "old-failed", "old-cancelled"]
KEPT = ["old-queued", "old-running", "new-done"]


async def _fill(journal: Any) -> None:
    for job_id, state in (("old-queued", "queued"), ("old-running", "running"), ("old-done", "done"),
                          ("old-failed", "failed"), ("old-cancelled", "cancelled"), ("new-done", "done")):
        await journal.save(_record(job_id, state, elapsed_s=2.0))


@pytest.fixture(params=["sqlite", "redis"])
async def journal(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        j = SqliteJournal(tmp_path / "journal.sqlite3")
        await _fill(j)
        # Every "old-*" job last changed at the epoch, long before any retention cut.
        j._db.execute("UPDATE jobs SET updated_at = 0 WHERE job_id LIKE 'old-%'")
        yield j
        await j.close()
        return
    import redis.asyncio as redis

    from streamgate.farm.journal_redis import RedisJournal

    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    j = RedisJournal(client, "test:broker")
    await _fill(j)
    for job_id in OLD:
        await client.zadd("test:broker:finished", {job_id: 0})
    yield j
    await client.aclose()


async def test_prune_drops_old_finished_jobs_and_keeps_active_ones_and_the_totals(journal: Any) -> None:
    before = await journal.totals()
    assert (before.done, before.failed) == (2, 1)
    assert await journal.prune(1000.0) == 3
    for job_id in OLD:
        assert await journal.get(job_id) is None, job_id
    for job_id in KEPT:
        assert await journal.get(job_id) is not None, job_id
    assert sorted(r.job_id for r in await journal.load_active()) == ["old-queued", "old-running"]
    assert await journal.totals() == before  # outcomes outlive their records
    assert await journal.prune(1000.0) == 0
    # A limit bounds one call's work; the rest goes on the next.
    await journal.save(_record("late-done", "done"))
    assert await journal.prune(10**12, limit=1) == 1
    assert await journal.prune(10**12, limit=10) == 1
    assert [r.job_id for r in await journal.load_active()] == ["old-queued", "old-running"]


async def test_broker_prunes_past_the_configured_retention(farm, start_broker, client) -> None:  # type: ignore[no-untyped-def]
    farm.configure(broker={"journal_retention": "1h"})
    journal = SqliteJournal(farm.config.journal_path)
    await _fill(journal)
    journal._db.execute("UPDATE jobs SET updated_at = 0 WHERE job_id LIKE 'old-%'")
    await journal.close()
    await start_broker()

    def rows() -> set[str]:
        with sqlite3.connect(farm.config.journal_path) as db:
            return {r[0] for r in db.execute("SELECT job_id FROM jobs")}

    await async_wait_until(lambda: _async(rows() == set(KEPT)), timeout=30, what="the old finished jobs pruned")
    stats = await client.stats()
    assert (stats.total_tasks_processed, stats.total_tasks_failed) == (2, 1)
    assert (await client.job("old-queued")).state == "queued"


async def test_kill_9_after_group_committed_submits_loses_none(farm, start_service, client) -> None:  # type: ignore[no-untyped-def]
    from streamgate.common.broker_client import BrokerClient, BrokerUnavailable

    async def up() -> bool:
        try:
            await client.stats()
        except BrokerUnavailable:
            return False
        return True

    broker = start_service("broker")
    await async_wait_until(up, timeout=30, what="the broker subprocess")
    clients = [BrokerClient(farm.config.broker_endpoints, timeout_s=30) for _ in range(12)]
    acknowledged: list[str] = []

    async def submit(n: int, c: BrokerClient) -> None:
        for k in range(15):
            job = farm.job(Path("/nonexistent.mp4"), job_id=f"g{n}-{k}")
            if (await c.submit(job)).accepted:
                acknowledged.append(job.job_id)

    try:
        await asyncio.gather(*(submit(n, c) for n, c in enumerate(clients)))
    finally:
        for c in clients:
            await c.close()
    assert len(acknowledged) == 12 * 15
    broker.proc.send_signal(signal.SIGKILL)
    assert broker.proc.wait(10) == -signal.SIGKILL
    start_service("broker")
    await async_wait_until(up, timeout=30, what="the restarted broker")
    for job_id in acknowledged:
        info = await client.job(job_id)
        assert info is not None and info.state == "queued", job_id
    assert (await client.stats()).queue_length == len(acknowledged)


async def _async(value: bool) -> bool:
    return value
