"""One long job must not hold every short job back while the pool sits at min_workers (issue 14):
a worker whose job has run past ``scaling_policy.long_job_after`` stops counting as capacity."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import async_wait_until

from streamgate.common.config import config_from_tree
from streamgate.common.protocol import JobDone
from streamgate.farm.scaling import desired_workers

pytestmark = pytest.mark.usefixtures("no_leaks")


async def _true(value: object) -> bool:
    return bool(value)


def test_long_running_workers_do_not_count_as_capacity() -> None:
    policy = config_from_tree({"transcoder": {"scaling_policy": {"min_workers": 1, "max_workers": 2}}}
                              ).transcoder.scaling_policy  # target 10, up at 2.5
    # One worker busy, one job waiting: the queue rule alone keeps one worker (ratio 0.1).
    assert desired_workers(policy, queue_length=1, workers=1, busy=1) == 1
    # ... unless that worker's job has run long: then one more, for the jobs behind it.
    assert desired_workers(policy, queue_length=1, workers=1, busy=1, long_running=1) == 2
    assert desired_workers(policy, queue_length=5, workers=2, busy=2, long_running=2) == 2  # max_workers
    assert desired_workers(policy, queue_length=0, workers=1, busy=1, long_running=1) == 1  # nobody waits
    # A second worker exists already (starting, not busy yet): it is not retired meanwhile.
    assert desired_workers(policy, queue_length=1, workers=2, busy=1, long_running=1) == 2


async def test_a_short_job_behind_a_long_one_runs_on_a_second_worker(farm, start_broker, start_pool, client,
                                                                     events, clip) -> None:
    # The default queue rule (10 waiting per worker, grow at 2.5x) would never grow for one job.
    farm.configure(transcoder={"worker_pool_size": 1, "scaling_policy": {
        "min_workers": 1, "max_workers": 2, "target_queue_len": 10, "scale_up_threshold": 2.5,
        "check_interval": "200ms", "long_job_after": "1s"}})
    await start_broker()
    running = await start_pool("gated")  # the long job: a real run held at its gate until released
    log = await events()
    long, short = farm.job(clip, job_id="long"), farm.job(clip, job_id="short", test_gate_attempts=[])
    assert (await client.submit(long)).accepted
    marker = Path(long.out_dir).parent / "long.running-1"
    await async_wait_until(lambda: _true(marker.exists()), timeout=20, what="the long job to run")
    assert (await client.submit(short)).accepted
    done = (await log.wait(JobDone, "short", timeout=60))[0]
    assert done.attempts == 1
    # Still held: the short one ran beside it, so on a second worker (a worker runs one job). No
    # count of workers here: with the short job done and nothing waiting the pool may already be
    # retiring that worker (a race the clean-clone CI hit once).
    assert (await client.job("long")).state == "running"
    (Path(long.out_dir).parent / "long.release").touch()
    await log.wait(JobDone, "long", timeout=60)
    # Nothing long and nothing waiting: back to min_workers.
    await async_wait_until(lambda: _true(len(running.pids()) == 1), timeout=20, what="back to 1 worker")
