"""Fault tests with real processes and real transcodes: kill -9 a worker mid-encode, kill -9 the
broker, a wedged pipeline, SIGTERM drain. Every one ends with the job done exactly once, and the
``no_leaks`` fixture checks that no encoder, worker or /dev/shm segment is left behind."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from support import async_wait_until

from streamgate.common.protocol import JobDone, JobFailed, JobQueued, JobStarted

pytestmark = pytest.mark.usefixtures("no_leaks")


async def _true(value: object) -> bool:
    return bool(value)


def _marker(job, attempt: int) -> Path:
    return Path(job.out_dir).parent / f"{job.job_id}.running-{attempt}"


def _release(job) -> None:
    (Path(job.out_dir).parent / f"{job.job_id}.release").touch()


async def test_kill_9_worker_mid_encode_job_completes_elsewhere(farm, start_broker, start_pool, client,
                                                                events, clip) -> None:
    farm.configure(transcoder={"worker_pool_size": 2, "scaling_policy": {"min_workers": 2, "max_workers": 2}})
    await start_broker()
    running = await start_pool("gated_mid")
    log = await events()
    job = farm.job(clip)
    await client.submit(job)
    await async_wait_until(lambda: _true(_marker(job, 1).exists()), timeout=20, what="the job mid-encode")
    victim = int(_marker(job, 1).read_text())
    assert victim in running.pids()
    os.kill(victim, signal.SIGKILL)
    failed = (await log.wait(JobFailed, job.job_id, timeout=10))[0]
    assert failed.reason.startswith("worker lost") and not failed.final
    done = (await log.wait(JobDone, job.job_id, timeout=30))[0]
    assert done.attempts == 2 and done.result.frames == 15
    assert int(_marker(job, 2).read_text()) != victim
    await async_wait_until(lambda: _true(running.pool.replaced == 1), timeout=10, what="the replacement")


async def test_kill_9_broker_restart_job_survives_and_completes_once(farm, start_service, start_pool,
                                                                      client, clip) -> None:
    broker = start_service("broker")
    await async_wait_until(lambda: _stats_ok(client), timeout=20, what="the broker subprocess")
    await start_pool("gated_mid")
    running_job, queued_job = farm.job(clip, priority=1), farm.job(clip, test_gate_attempts=[])
    await client.submit(running_job)
    await async_wait_until(lambda: _true(_marker(running_job, 1).exists()), timeout=20,
                           what="the job mid-encode")
    assert (await client.submit(queued_job)).accepted  # journaled: acknowledged means durable
    # A second broker on the node is refused: it would steal the live one's ipc:// endpoints.
    second = start_service("broker")
    assert second.proc.wait(20) == 1 and "another broker is running" in second.log.read_text()
    broker.proc.send_signal(signal.SIGKILL)
    assert broker.proc.wait(10) == -signal.SIGKILL
    start_service("broker")  # the same journal
    await async_wait_until(lambda: _stats_ok(client), timeout=20, what="the restarted broker")
    info = await client.job(queued_job.job_id)
    assert info is not None and info.state in ("queued", "running")
    _release(running_job)
    await async_wait_until(lambda: _both_done(client, running_job, queued_job), timeout=40,
                           what="both jobs done")
    # The running job was re-adopted by its worker, not run again; each job is done once.
    assert (await client.job(running_job.job_id)).attempts == 1
    assert not _marker(running_job, 2).exists()
    assert (await client.job(queued_job.job_id)).attempts == 1
    assert (await client.stats()).total_tasks_processed == 2
    with sqlite3.connect(farm.config.journal_path) as db:
        states = dict(db.execute("SELECT job_id, state FROM jobs").fetchall())
    assert states == {running_job.job_id: "done", queued_job.job_id: "done"}


async def _stats_ok(client) -> bool:
    from streamgate.common.broker_client import BrokerUnavailable

    try:
        await client.stats()
    except BrokerUnavailable:
        return False
    return True


async def _both_done(client, *jobs) -> bool:
    infos = [await client.job(j.job_id) for j in jobs]
    return all(i is not None and i.state == "done" for i in infos)


async def test_stalled_worker_is_killed_and_the_job_retried(farm, start_broker, start_pool, client,
                                                            events, clip) -> None:
    farm.configure(broker={"stall_timeout": "3s"}, transcoder={"abort_grace": "1s"})
    await start_broker()
    running = await start_pool("stall_first")
    log = await events()
    job = farm.job(clip)
    await client.submit(job)
    await async_wait_until(lambda: _true(_marker(job, 1).exists()), timeout=20, what="the stalled run")
    stalled = int(_marker(job, 1).read_text())
    t0 = time.monotonic()
    failed = (await log.wait(JobFailed, job.job_id, timeout=10))[0]
    assert failed.reason == "stalled: no frame for 3s" and not failed.final
    assert time.monotonic() - t0 < 6
    done = (await log.wait(JobDone, job.job_id, timeout=30))[0]
    assert done.attempts == 2
    # The wedged pipeline ignored its cancel: the worker killed itself, the pool replaced it.
    assert int(_marker(job, 2).read_text()) != stalled
    await async_wait_until(lambda: _true(running.pool.replaced == 1), timeout=10, what="the replacement")
    assert stalled not in running.pids()


async def test_sigterm_drain_hands_back_the_running_job_which_finishes_elsewhere(
        farm, start_broker, start_service, start_pool, client, events, clip, runner) -> None:
    # Long leases: the job must come back by hand-back at once, not by a lease expiring.
    farm.configure(broker={"heartbeat_liveness": 100})  # a lease would expire after 10 s
    await start_broker()
    log = await events()
    draining = start_service("farm", "--runner", runner("gated_mid"))
    job = farm.job(clip)
    await client.submit(job)
    await async_wait_until(lambda: _true(_marker(job, 1).exists()), timeout=30, what="the job mid-encode")
    other = await start_pool("real")
    t0 = time.monotonic()
    draining.proc.send_signal(signal.SIGTERM)
    queued = await log.wait(JobQueued, job.job_id, count=2, timeout=10)
    assert time.monotonic() - t0 < 5.0 and queued[1].attempt == 1  # drain_timeout is 0.2 s
    assert draining.proc.wait(15) == 0  # drained within drain_timeout + grace, exit 0
    done = (await log.wait(JobDone, job.job_id, timeout=30))[0]
    assert done.attempts == 2
    started = log.of(JobStarted, job.job_id)
    assert started[-1].worker.endswith(f"/{other.pids()[0]}")
    assert not log.of(JobFailed)  # a hand-back is not a failure
    info = await client.job(job.job_id)
    assert info.state == "done" and info.reason == ""
    assert "1 workers drained, 0 killed" in draining.log.read_text()


@pytest.mark.slow
async def test_chaos_every_job_done_exactly_once(farm, start_broker, start_pool, client, events,
                                                 video_factory) -> None:
    """Twelve real jobs on two autoscaled workers while workers are killed at every third start."""
    farm.configure(transcoder={"worker_pool_size": 2, "scaling_policy": {"min_workers": 1, "max_workers": 3}},
                   broker={"max_retries": 5})  # 4 kills at most: never a dead letter
    clip = video_factory("chaos.mp4", seconds=3.0, width=320, height=240, fps=15)
    await start_broker()
    running = await start_pool("real")
    log = await events()
    jobs = [farm.job(clip, priority=i % 3) for i in range(12)]
    for job in jobs:
        assert (await client.submit(job)).accepted
    killed: set[int] = set()
    while len(log.of(JobDone)) < len(jobs):
        started = log.of(JobStarted)
        for event in started[2::3]:
            pid = int(event.worker.rsplit("/", 1)[1])
            if pid not in killed and len(killed) < 4:
                killed.add(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # already finished and retired
        seen = len(started)
        await async_wait_until(lambda seen=seen: _true(len(log.of(JobStarted)) > seen
                                                       or len(log.of(JobDone)) == len(jobs)),
                               timeout=60, what="progress of the chaos run")
    done = log.of(JobDone)
    assert sorted(e.job_id for e in done) == sorted(j.job_id for j in jobs)  # each once
    stats = await client.stats()
    assert stats.total_tasks_processed == len(jobs) and stats.total_tasks_failed == 0
    assert killed and running.pool.replaced >= 1
