"""The pool: autoscaling with the broker's queue, hung and dead workers replaced."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from support import async_wait_until

from streamgate.common.config import config_from_tree
from streamgate.common.protocol import JobDone, JobFailed
from streamgate.farm.scaling import desired_workers

pytestmark = pytest.mark.usefixtures("no_leaks")


async def _true(value: object) -> bool:
    return bool(value)


def test_scaling_rule() -> None:
    policy = config_from_tree({}).transcoder.scaling_policy  # min 2, max 16, target 10, 2.5 / 0.5
    assert desired_workers(policy, queue_length=0, workers=2, busy=0) == 2  # never below min
    assert desired_workers(policy, queue_length=49, workers=2, busy=2) == 2  # ratio 2.45 < 2.5
    assert desired_workers(policy, queue_length=50, workers=2, busy=2) == 5  # back to 10 per worker
    assert desired_workers(policy, queue_length=1000, workers=4, busy=4) == 16  # capped at max
    assert desired_workers(policy, queue_length=10, workers=6, busy=3) == 5  # ratio 0.17: one fewer
    assert desired_workers(policy, queue_length=0, workers=6, busy=6) == 6  # busy are never retired
    assert desired_workers(policy, queue_length=20, workers=4, busy=4) == 4  # in between: steady


async def test_autoscaling_grows_with_the_queue_and_shrinks_when_idle(farm, start_broker, start_pool,
                                                                      client, events, clip) -> None:
    farm.configure(transcoder={"scaling_policy": {"min_workers": 1, "max_workers": 3}})
    await start_broker()
    running = await start_pool("gated")
    log = await events()
    jobs = [farm.job(clip) for _ in range(4)]
    for job in jobs:
        assert (await client.submit(job)).accepted
    # One worker, a queue of three: the pool grows to max_workers (3) and each takes a job.
    await async_wait_until(lambda: _true(len(running.pids()) == 3), timeout=20, what="3 workers")
    markers = [Path(j.out_dir).parent / f"{j.job_id}.running-1" for j in jobs[:3]]
    await async_wait_until(lambda: _true(all(m.exists() for m in markers)), timeout=20,
                           what="three jobs running at once")
    assert (await client.stats()).active_workers == 3
    for job in jobs:
        (Path(job.out_dir).parent / f"{job.job_id}.release").touch()
    await log.wait(JobDone, count=4, timeout=60)
    # Idle now: the pool retires idle workers one per check interval, down to min_workers.
    await async_wait_until(lambda: _true(len(running.pids()) == 1), timeout=20, what="back to 1 worker")
    assert running.pool.replaced == 0  # retired on purpose, not replaced
    stats = await client.stats()
    assert stats.total_tasks_processed == 4 and stats.queue_length == 0
    await async_wait_until(lambda: _registered(client, 1), timeout=10, what="the broker to see 1 worker")


async def _registered(client, count: int) -> bool:
    return (await client.stats()).total_workers == count


async def test_hung_worker_is_killed_replaced_and_its_job_runs_again(farm, start_broker, start_pool,
                                                                     client, events, clip) -> None:
    await start_broker()
    running = await start_pool("gated")
    log = await events()
    job = farm.job(clip)
    await client.submit(job)
    marker = Path(job.out_dir).parent / f"{job.job_id}.running-1"
    await async_wait_until(lambda: _true(marker.exists()), timeout=20, what="the job running")
    (hung,) = running.pids()
    assert int(marker.read_text()) == hung
    os.kill(hung, signal.SIGSTOP)  # alive but deaf: no heartbeats, no pongs
    try:
        failed = (await log.wait(JobFailed, job.job_id, timeout=10))[0]
        assert failed.reason.startswith("worker lost") and not failed.final
        await async_wait_until(lambda: _true(running.pool.killed_hung == 1), timeout=10,
                               what="the pool to kill the hung worker")
    finally:
        os.kill(hung, signal.SIGCONT)
    done = (await log.wait(JobDone, job.job_id, timeout=30))[0]
    assert done.attempts == 2
    (replacement,) = running.pids()
    assert replacement != hung and running.pool.replaced == 1


async def test_dead_idle_worker_is_replaced(farm, start_broker, start_pool, client, events, clip) -> None:
    await start_broker()
    running = await start_pool("real")
    (first,) = running.pids()
    os.kill(first, signal.SIGKILL)
    await async_wait_until(lambda: _true(running.pool.replaced == 1 and len(running.pids()) == 1),
                           timeout=10, what="a replacement worker")
    assert running.pids() != [first]
    # The broker learns of the death from the missed heartbeats (a job sent meanwhile would be
    # retried): once purged, the farm is whole again.
    await async_wait_until(lambda: _true(running.pool.workers[0].state == "idle"), timeout=10,
                           what="the replacement connected")
    await async_wait_until(lambda: _registered(client, 1), timeout=10, what="the dead worker purged")
    log = await events()
    job = farm.job(clip)
    await client.submit(job)
    assert (await log.wait(JobDone, job.job_id, timeout=30))[0].attempts == 1
