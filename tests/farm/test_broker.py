"""The broker over real ZeroMQ sockets: queue, priorities, leases, journal, at the wire level.

Workers here are :class:`RawWorker` DEALERs speaking the protocol by hand, so a test can be the
worker that goes silent, stalls or reports late; tests with real transcodes are in test_worker,
test_pool and test_faults.
"""

from __future__ import annotations

import time

import msgspec
import pytest
import zmq
import zmq.asyncio
from support import async_wait_until

from streamgate.common.media import TranscodeResult
from streamgate.common.protocol import (
    CLIENT,
    Abort,
    Assign,
    Disconnect,
    Done,
    ErrorReply,
    Heartbeat,
    JobCancelled,
    JobDone,
    JobFailed,
    JobQueued,
    Progress,
)

pytestmark = pytest.mark.usefixtures("no_leaks")

RESULT = TranscodeResult(duration_s=1.0, renditions=[], frames=15)


async def test_submit_query_stats_and_idempotent_resubmit(farm, start_broker, client, events) -> None:
    await start_broker()
    log = await events()
    job = farm.job("/nowhere/source.mp4", priority=3)
    reply = await client.submit(job)
    assert reply.accepted and reply.state == "queued"
    info = await client.job(job.job_id)
    assert info is not None and info.state == "queued" and info.priority == 3 and info.attempts == 0
    assert info.submitted_at > 0
    again = await client.submit(job)  # the edge resubmits after a timeout: acknowledged, not doubled
    assert again.accepted and again.reason == "already queued"
    stats = await client.stats()
    assert stats.queue_length == 1 and stats.total_workers == 0
    assert await client.job("unknown") is None
    assert len(await log.wait(JobQueued, job.job_id)) == 1


async def test_queue_full_is_refused_with_a_reason_then_accepted(farm, start_broker, client, events) -> None:
    farm.configure(transcoder={"max_queue_size": 2})
    await start_broker()
    log = await events()
    first, second, third = (farm.job("/src.mp4") for _ in range(3))
    assert (await client.submit(first)).accepted
    assert (await client.submit(second)).accepted
    refused = await client.submit(third)
    assert not refused.accepted and refused.reason == "queue full" and refused.retry_after_s > 0
    assert await client.job(third.job_id) is None  # nothing half-accepted
    # Room again (a cancel here; a dispatch frees it the same way): the resubmit is accepted.
    assert await client.cancel(first.job_id)
    await log.wait(JobCancelled, first.job_id)
    assert (await client.submit(third)).accepted
    assert (await client.stats()).queue_length == 2
    assert not await client.cancel(first.job_id)  # already cancelled
    assert (await client.job(first.job_id)).state == "cancelled"


async def test_high_priority_overtakes_queued_low_ones(farm, start_broker, client, raw_worker) -> None:
    await start_broker()
    low = [farm.job("/src.mp4", priority=0) for _ in range(3)]
    high = farm.job("/src.mp4", priority=10)
    for job in [*low, high]:
        assert (await client.submit(job)).accepted
    worker = raw_worker("raw-1")
    order = []
    await worker.ready()
    for _ in range(4):
        assign = await worker.expect(Assign)
        order.append(assign.job.job_id)
        await worker.send(Done(job_id=assign.job.job_id, attempt=assign.attempt, result=RESULT))
    assert order == [high.job_id, *(j.job_id for j in low)]
    stats = await client.stats()
    assert stats.total_tasks_processed == 4 and stats.queue_length == 0


async def test_silent_worker_loses_its_lease_and_the_job_runs_again(farm, start_broker, client, events, raw_worker) -> None:
    await start_broker()
    log = await events()
    job = farm.job("/src.mp4")
    await client.submit(job)
    silent = raw_worker("raw-silent")
    other = raw_worker("raw-other")
    await silent.ready()
    first = await silent.expect(Assign)
    assert first.attempt == 1
    t0 = time.monotonic()
    # It never heartbeats again: expiry is interval x liveness = 0.5 s.
    failed = (await log.wait(JobFailed, job.job_id, timeout=5))[0]
    assert 0.45 <= time.monotonic() - t0 < 2.5
    assert not failed.final and failed.reason.startswith("worker lost")
    info = await client.job(job.job_id)
    assert info.state == "queued" and info.attempts == 1
    await other.ready()
    second = await other.expect(Assign)
    assert second.attempt == 2 and second.job.job_id == job.job_id
    # The silent worker's late result is stale (its lease is gone): ignored, told to reconnect.
    await silent.send(Done(job_id=job.job_id, attempt=1, result=RESULT))
    assert isinstance(await silent.expect(Disconnect), Disconnect)
    await other.send(Done(job_id=job.job_id, attempt=2, result=RESULT, elapsed_s=0.5))
    done = await log.wait(JobDone, job.job_id)
    info = await client.job(job.job_id)
    assert info.state == "done" and info.attempts == 2 and info.result == RESULT
    assert len(done) == 1 and (await client.stats()).total_tasks_processed == 1


async def test_task_timeout_then_dead_letter_after_the_retry_limit(farm, start_broker, client, events, raw_worker) -> None:
    farm.configure(transcoder={"task_timeout": "300ms"}, broker={"max_retries": 1})
    await start_broker()
    log = await events()
    job = farm.job("/src.mp4")
    await client.submit(job)
    worker = raw_worker("raw-slow")
    await worker.ready()
    for attempt in (1, 2):
        assign = await worker.expect(Assign, heartbeat=True)
        assert assign.attempt == attempt
        abort = await worker.expect(Abort, heartbeat=True)
        assert abort.attempt == attempt and abort.reason.startswith("task timeout")
        await worker.ready()  # stopped the run: free again
    failed = await log.wait(JobFailed, job.job_id, count=2)
    assert [f.final for f in failed] == [False, True]
    info = await client.job(job.job_id)
    assert info.state == "failed" and "task timeout" in info.reason
    assert "after 2 failed attempts" in info.reason
    assert (await client.stats()).total_tasks_failed == 1


async def test_stall_watchdog_aborts_a_run_whose_frames_stop(farm, start_broker, client, events, raw_worker) -> None:
    farm.configure(broker={"stall_timeout": "400ms"})
    await start_broker()
    log = await events()
    job = farm.job("/src.mp4")
    await client.submit(job)
    worker = raw_worker("raw-stall")
    await worker.ready()
    assign = await worker.expect(Assign)
    # Frames advance for a while (heartbeats too), then stop while heartbeats go on.
    for frames in range(1, 6):
        # Before the send: the broker's stall clock starts at its receipt, never earlier, so
        # the abort comes at least stall_timeout after this however slow the machine is.
        t_last = time.monotonic()
        await worker.send(Progress(job_id=job.job_id, attempt=1, frames=frames, fraction=frames / 30))
        await worker.send(Heartbeat())
        await worker.expect(Heartbeat)
    abort = await worker.expect(Abort, heartbeat=True, timeout=5)
    assert abort.reason.startswith("stalled") and assign.attempt == abort.attempt
    assert time.monotonic() - t_last >= 0.3
    failed = (await log.wait(JobFailed, job.job_id))[0]
    assert not failed.final and failed.reason.startswith("stalled")
    assert (await client.job(job.job_id)).state == "queued"


async def test_cancel_a_running_job_aborts_its_worker(farm, start_broker, client, events, raw_worker) -> None:
    await start_broker()
    log = await events()
    job = farm.job("/src.mp4")
    await client.submit(job)
    worker = raw_worker("raw-run")
    await worker.ready()
    await worker.expect(Assign)
    assert await client.cancel(job.job_id)
    abort = await worker.expect(Abort, heartbeat=True)
    assert abort.reason == "cancelled"
    await log.wait(JobCancelled, job.job_id)
    # A result racing the cancel does not resurrect the job.
    await worker.send(Done(job_id=job.job_id, attempt=1, result=RESULT))
    await worker.ready()
    await async_wait_until(lambda: _idle(client), timeout=5, what="the worker idle again")
    assert (await client.job(job.job_id)).state == "cancelled"
    assert (await client.stats()).total_tasks_processed == 0


async def _idle(client) -> bool:
    stats = await client.stats()
    return stats.idle_workers == 1 and stats.running_tasks == 0


async def test_journal_restart_keeps_queued_and_readopts_running(farm, start_broker, client, events, raw_worker) -> None:
    broker = await start_broker()
    queued, running = farm.job("/a.mp4", priority=0), farm.job("/b.mp4", priority=5)
    await client.submit(running)
    worker = raw_worker("raw-keep")
    await worker.ready()
    assign = await worker.expect(Assign)
    assert assign.job.job_id == running.job_id
    await client.submit(queued)
    await broker.stop()
    await start_broker()  # same journal
    log = await events()
    info = await client.job(queued.job_id)
    assert info is not None and info.state == "queued"
    assert (await client.job(running.job_id)).state == "running"
    # The worker kept running the job through the restart: it re-announces it and keeps it.
    await worker.ready(job_id=running.job_id, attempt=1)
    await worker.send(Done(job_id=running.job_id, attempt=1, result=RESULT))
    await log.wait(JobDone, running.job_id)
    done = await client.job(running.job_id)
    assert done.state == "done" and done.attempts == 1  # not run twice
    # ... and is then free for the queued one.
    nxt = await worker.expect(Assign)
    assert nxt.job.job_id == queued.job_id


async def test_bad_frames_fail_at_the_boundary(farm, start_broker, client) -> None:
    await start_broker()
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(farm.config.broker_endpoints.frontend)
    backend = ctx.socket(zmq.DEALER)
    backend.setsockopt(zmq.LINGER, 0)
    backend.connect(farm.config.broker_endpoints.backend)
    try:
        await sock.send_multipart([CLIENT, b"\xc1not msgpack"])
        reply = msgspec.msgpack.decode((await sock.recv_multipart())[1], type=ErrorReply)
        assert reply.reason.startswith("bad request")
        await backend.send_multipart([b"junk", b"junk", b"junk"])
        await backend.send_multipart([b"SGFW01", msgspec.msgpack.encode({"type": "nope"})])
        assert (await client.stats()).total_workers == 0  # still serving, nobody registered
    finally:
        sock.close()
        backend.close()
        ctx.term()
