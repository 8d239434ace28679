"""The broker journal's contract, run against both backends (SQLite on a node, Redis in a fleet),
and the Redis journal's fencing of a deposed leader."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from streamgate.common.protocol import JobSpec
from streamgate.farm.journal import JobRecord, SqliteJournal
from streamgate.farm.journal_redis import Fenced, RedisJournal


def record(job_id: str, state: str = "queued", **kw) -> JobRecord:  # type: ignore[no-untyped-def]
    return JobRecord(spec=JobSpec(job_id=job_id, source="/s", out_dir="/o"), state=state, **kw)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "redis"])
async def journal(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        j = SqliteJournal(tmp_path / "journal.sqlite3")
    else:
        j = RedisJournal.from_url(request.getfixturevalue("redis_url"), "test:broker")
    yield j
    await j.close()


async def test_save_get_and_active_in_acceptance_order(journal) -> None:  # type: ignore[no-untyped-def]
    for job_id in ("b", "a", "c"):
        await journal.save(record(job_id))
    assert [r.job_id for r in await journal.load_active()] == ["b", "a", "c"]
    running = record("a", "running", attempts=1, worker="w1")
    await journal.save(running)
    got = await journal.get("a")
    assert got is not None and (got.state, got.attempts, got.worker) == ("running", 1, "w1")
    assert got.updated_at > 0
    await journal.save(record("b", "done", attempts=1, elapsed_s=2.5))
    assert [r.job_id for r in await journal.load_active()] == ["a", "c"]
    assert await journal.get("nope") is None


async def test_totals_count_each_outcome_once(journal) -> None:  # type: ignore[no-untyped-def]
    await journal.save(record("a"))
    await journal.save(record("a", "done", elapsed_s=2.0))
    await journal.save(record("a", "done", elapsed_s=2.0))  # a repeated save of the same outcome
    await journal.save(record("b", "failed", reason="bad input"))
    await journal.save(record("c", "cancelled"))
    totals = await journal.totals()
    assert (totals.done, totals.failed, totals.done_seconds) == (1, 1, 2.0)
    assert await journal.load_active() == []


async def test_a_deposed_leader_is_fenced(redis_url: str) -> None:
    old = RedisJournal.from_url(redis_url, "test:broker")
    new = RedisJournal.from_url(redis_url, "test:broker")
    try:
        assert await old.take_epoch() == 1
        await old.save(record("a"))
        assert await new.take_epoch() == 2  # the standby wins the lock
        with pytest.raises(Fenced):
            await old.save(record("a", "done"))
        await new.save(record("a", "running", attempts=1))
        got = await new.get("a")
        assert got is not None and got.state == "running"
        assert (await new.totals()).done == 0
    finally:
        await old.close()
        await new.close()
