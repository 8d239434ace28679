"""Worker processes running real transcodes of small generated clips through the broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import m3u8
import pytest
from support import async_wait_until

from streamgate.common.protocol import JobCancelled, JobDone, JobFailed, JobProgress, JobStarted

pytestmark = pytest.mark.usefixtures("no_leaks")


async def test_a_job_runs_to_a_real_ladder(farm, start_broker, start_pool, client, events, clip) -> None:
    await start_broker()
    await start_pool("real")
    log = await events()
    job = farm.job(clip)
    assert (await client.submit(job)).accepted
    done = (await log.wait(JobDone, job.job_id, timeout=30))[0]
    assert done.attempts == 1 and done.elapsed_s > 0
    assert [r.height for r in done.result.renditions] == [240] and done.result.frames == 15
    master = m3u8.load(str(Path(job.out_dir) / done.result.master))
    assert master.is_variant and len(master.playlists) == 1
    progress = log.of(JobProgress, job.job_id)
    assert progress and all(0.0 <= p.fraction <= 1.0 for p in progress)
    started = log.of(JobStarted, job.job_id)
    assert len(started) == 1 and started[0].worker
    info = await client.job(job.job_id)
    assert info.state == "done" and info.progress == 1.0 and info.result == done.result
    stats = await client.stats()
    assert stats.total_tasks_processed == 1 and stats.average_task_time > 0
    assert stats.total_workers == 1 and stats.idle_workers == 1


async def test_bad_input_is_dead_lettered_at_once(farm, start_broker, start_pool, client, events,
                                                  not_a_video) -> None:
    farm.configure(broker={"max_retries": 2})
    await start_broker()
    await start_pool("real")
    log = await events()
    job = farm.job(not_a_video)
    await client.submit(job)
    failed = await log.wait(JobFailed, job.job_id, count=1, timeout=30)
    assert [f.final for f in failed] == [True]  # a deterministic media error: never retried
    info = await client.job(job.job_id)
    assert info.state == "failed" and info.attempts == 1
    # The pipeline's own reason travels to the record as it is.
    assert failed[0].reason and info.reason == failed[0].reason
    assert (await client.stats()).total_tasks_failed == 1
    assert not log.of(JobDone)


async def test_worker_reconnects_with_backoff_until_the_broker_comes(farm, start_broker, client, events,
                                                                       clip) -> None:
    from streamgate.farm.worker import Worker, run_pipeline

    worker = Worker(farm.config, runner=run_pipeline, worker_id="late-1")
    task = asyncio.create_task(worker.run())
    try:
        # No broker: after each silent expiry (0.5 s) a fresh socket, after 0.1, 0.2, 0.4 s...
        await async_wait_until(lambda: _async(worker.sessions >= 3), timeout=10,
                               what="the worker to reconnect twice")
        await start_broker()
        log = await events()
        job = farm.job(clip)
        await client.submit(job)
        assert (await log.wait(JobDone, job.job_id, timeout=30))[0].attempts == 1
        assert (await client.job(job.job_id)).worker == "late-1"
    finally:
        worker.drain()
        await task


async def _async(value: bool) -> bool:
    return value


async def test_cancel_running_job_then_the_worker_takes_the_next(farm, start_broker, start_pool, client,
                                                                 events, clip) -> None:
    await start_broker()
    await start_pool("gated")
    log = await events()
    first, second = farm.job(clip), farm.job(clip)
    await client.submit(first)
    marker = Path(first.out_dir).parent / f"{first.job_id}.running-1"
    await async_wait_until(lambda: _async(marker.exists()), timeout=20, what="the job at its gate")
    assert (await client.job(first.job_id)).state == "running"
    assert await client.cancel(first.job_id)
    await log.wait(JobCancelled, first.job_id)
    # The worker stops the run (cancel event) and serves the next job: no stuck worker.
    await client.submit(farm.job(clip, job_id=second.job_id, test_gate_attempts=[]))
    done = (await log.wait(JobDone, second.job_id, timeout=30))[0]
    assert done.attempts == 1
    assert (await client.job(first.job_id)).state == "cancelled"
    assert not log.of(JobDone, first.job_id)


async def test_task_timeout_takes_the_lease_back_from_a_real_worker(farm, start_broker, start_pool, client,
                                                                    events, clip) -> None:
    farm.configure(transcoder={"task_timeout": "2s"})
    await start_broker()
    await start_pool("gated")  # attempt 1 waits at its gate past the timeout; attempt 2 runs
    log = await events()
    job = farm.job(clip)
    await client.submit(job)
    failed = (await log.wait(JobFailed, job.job_id, timeout=10))[0]
    assert failed.reason == "task timeout: ran over 2s" and not failed.final and failed.attempt == 1
    done = (await log.wait(JobDone, job.job_id, timeout=30))[0]
    # The same worker stopped the aborted run and took the retry (a real run, well under 2 s
    # unless the machine is very busy: then a further retry, still done once).
    assert done.attempts >= 2 and len(log.of(JobDone)) == 1
    assert (await client.stats()).total_workers == 1


async def test_high_priority_job_overtakes_queued_low_ones(farm, start_broker, start_pool, client,
                                                           events, clip) -> None:
    await start_broker()
    await start_pool("gated")  # one worker
    log = await events()
    blocker = farm.job(clip)  # holds the worker while the queue fills
    await client.submit(blocker)
    await async_wait_until(lambda: _async(Path(blocker.out_dir).parent.joinpath(
        f"{blocker.job_id}.running-1").exists()), timeout=20, what="the first job running")
    low = [farm.job(clip, test_gate_attempts=[]) for _ in range(2)]
    high = farm.job(clip, priority=5, test_gate_attempts=[])
    for job in [*low, high]:
        assert (await client.submit(job)).accepted
    (Path(blocker.out_dir).parent / f"{blocker.job_id}.release").touch()
    await log.wait(JobDone, count=4, timeout=60)
    order = [e.job_id for e in log.of(JobStarted)]
    assert order == [blocker.job_id, high.job_id, *(j.job_id for j in low)]


async def test_a_result_finished_while_the_broker_was_down_counts_once(farm, start_broker, client, events,
                                                                        clip, runner) -> None:
    from streamgate.farm.worker import Worker, load_runner

    broker = await start_broker()
    worker = Worker(farm.config, runner=load_runner(runner("gated")), worker_id="w-away")
    task = asyncio.create_task(worker.run())
    try:
        job = farm.job(clip)
        await client.submit(job)
        marker = Path(job.out_dir).parent / f"{job.job_id}.running-1"
        await async_wait_until(lambda: _async(marker.exists()), timeout=20, what="the job running")
        await broker.stop()  # the journal says "running" on worker w-away
        sessions = worker.sessions
        await async_wait_until(lambda: _async(worker.sessions > sessions), timeout=10,
                               what="the worker to notice the broker is gone")
        (Path(job.out_dir).parent / f"{job.job_id}.release").touch()
        await async_wait_until(lambda: _async(worker.current is None), timeout=30,
                               what="the run to finish with no broker")
        await start_broker()
        log = await events()
        await async_wait_until(lambda: _done(client, job.job_id), timeout=20, what="the job done")
        info = await client.job(job.job_id)
        assert info.attempts == 1 and info.worker == "w-away"  # its result counted, no second run
        assert not (Path(job.out_dir).parent / f"{job.job_id}.running-2").exists()
        assert (await client.stats()).total_tasks_processed == 1
        assert not log.of(JobFailed)
    finally:
        worker.drain()
        await task


async def _done(client, job_id: str) -> bool:
    info = await client.job(job_id)
    return info is not None and info.state == "done"
