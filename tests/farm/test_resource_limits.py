"""Workers and encoders run under memory and CPU-time limits (issue 14): a limit reached is a
failed job with its reason, once, and the pool goes on serving the next job."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from media_files import write_flat

from streamgate.common.protocol import JobDone, JobFailed

pytestmark = pytest.mark.usefixtures("no_leaks")


async def _limited_job_fails_then_the_pool_serves(farm, start_broker, start_pool, client, events,
                                                  heavy: Path, clip: Path, words: str) -> None:
    await start_broker()
    running = await start_pool("real")
    log = await events()
    job = farm.job(heavy)
    assert (await client.submit(job)).accepted
    failed = await log.wait(JobFailed, job.job_id, timeout=60)
    assert [f.final for f in failed] == [True]  # reached once: never retried
    info = await client.job(job.job_id)
    assert info.state == "failed" and info.attempts == 1 and words in info.reason, info.reason
    # Not a dead pool: the next job runs (on the same worker, or on its replacement).
    after = farm.job(clip)
    assert (await client.submit(after)).accepted
    assert (await log.wait(JobDone, after.job_id, timeout=60))[0].attempts == 1
    assert running.pool.killed_hung == 0


async def test_a_job_over_the_memory_limit_fails_with_the_reason(farm, start_broker, start_pool, client, events,
                                                                 clip, tmp_path) -> None:
    # A 4000x4000 picture is 24 MB: a frame ring of 64 of them (1.5 GB) is over the 1.2 GiB limit.
    heavy = write_flat(tmp_path / "square.mp4", 4000, 4000, frames=2)
    farm.configure(transcoder={"worker_memory_limit": "1200MiB", "max_source_pixels": 0, "ring_slots": 64,
                               "ladder": [240]}, broker={"max_retries": 3})
    await _limited_job_fails_then_the_pool_serves(farm, start_broker, start_pool, client, events, heavy, clip,
                                                  "memory limit")


async def test_a_job_over_the_cpu_time_limit_fails_with_the_reason(farm, start_broker, start_pool, client,
                                                                   events, clip,
                                                                   video_factory: Callable[..., Path]) -> None:
    # Twenty seconds of 640x480 at x264's "slower" preset: far more than 2 CPU seconds per encoder.
    heavy = video_factory("heavy.mp4", seconds=20.0, width=640, height=480, fps=25, audio=False)
    farm.configure(transcoder={"cpu_time_limit_per_job": "2s", "preset": "slower", "ladder": [480]},
                   broker={"max_retries": 3})
    await _limited_job_fails_then_the_pool_serves(farm, start_broker, start_pool, client, events, heavy, clip,
                                                  "CPU time limit")
