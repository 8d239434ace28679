"""The pool: autoscaling with the broker's queue, hung and dead workers replaced."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from support import async_wait_until

from streamgate.common.config import config_from_tree
from streamgate.common.protocol import JobDone, JobFailed
from streamgate.farm.pool import Pool
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


# Module-level code runs when the worker loads its runner, before it reports up: with the flag
# file present the worker dies at start, every time (a broken install, a bad runner).
CRASHING_RUNNER = '''
from pathlib import Path

if Path(__file__).with_name("crash").exists():
    raise SystemExit(3)

from streamgate.farm.worker import run_pipeline  # noqa: E402,F401
'''


async def test_a_crash_loop_backs_off_and_a_worker_that_stays_up_resets_it(farm, start_broker,
                                                                            client) -> None:
    farm.configure(server={"restart_delay": "200ms", "restart_delay_max": "800ms",
                           "restart_reset_after": "1s"})
    await start_broker()
    runner_file = farm.data_dir / "crashing.py"
    runner_file.write_text(CRASHING_RUNNER)
    flag = farm.data_dir / "crash"
    flag.touch()
    pool = Pool(farm.config, runner=f"{runner_file}:run_pipeline", client=client)
    stop = asyncio.Event()
    task = asyncio.create_task(pool.run(stop))
    try:
        await async_wait_until(lambda: _true(len(pool.restarts) >= 4), timeout=90, what="four restarts")
        first = list(pool.restarts)[:4]
        # The gap doubles up to the cap (before: a replacement on the next 100 ms tick, forever).
        assert [r.delay_s for r in first] == pytest.approx([0.2, 0.4, 0.8, 0.8])
        for r in first:  # measured on the pool's own clock: each replacement waited its delay
            assert r.started_at - r.died_at >= r.delay_s
        assert pool.backoff.failures >= 4

        flag.unlink()  # the next replacement starts and stays up

        async def stayed_up() -> bool:
            now = time.monotonic()
            return any(w.uptime(now) >= 1.0 and not w.retiring for w in pool.workers)

        await async_wait_until(stayed_up, timeout=60, what="a worker up for the reset time")
        (worker,) = [w for w in pool.workers if w.process.exitcode is None]
        before = len(pool.restarts)
        os.kill(worker.pid, signal.SIGKILL)
        await async_wait_until(lambda: _true(len(pool.restarts) > before), timeout=30,
                               what="the replacement of the worker that stayed up")
        assert pool.restarts[-1].delay_s == pytest.approx(0.2)  # back to the first delay
    finally:
        stop.set()
        await task
