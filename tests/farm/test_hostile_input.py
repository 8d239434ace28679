"""Hostile sources through a real broker and worker pool (issue 14): a deterministic media error
fails the job once, with a reason; a transient error is retried with the broker's backoff."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from streamgate.common.protocol import JobDone, JobFailed
from streamgate.common.synth import make_video

pytestmark = pytest.mark.usefixtures("no_leaks")


def _random_bytes(folder: Path) -> Path:
    path = folder / "random.mp4"
    path.write_bytes(random.Random(14).randbytes(64 * 1024))
    return path


def _empty(folder: Path) -> Path:
    path = folder / "empty.mp4"
    path.write_bytes(b"")
    return path


def _audio_only(folder: Path) -> Path:
    return make_video(folder / "audio.m4a", seconds=1.0, video=False)


def _truncated(folder: Path) -> Path:
    whole = make_video(folder / "whole.mp4", seconds=2.0, width=160, height=120, fps=15)
    path = folder / "truncated.mp4"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    return path


BAD_SOURCES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "random bytes": (_random_bytes, "not a readable media file"),
    "empty": (_empty, "empty"),
    "audio only": (_audio_only, "no video stream"),
    "truncated": (_truncated, ""),
}


@pytest.mark.parametrize("kind", sorted(BAD_SOURCES))
async def test_bad_input_fails_once_with_its_reason(kind, farm, start_broker, start_pool, client, events,
                                                    tmp_path) -> None:
    make, words = BAD_SOURCES[kind]
    source = make(tmp_path)
    farm.configure(broker={"max_retries": 3, "retry_backoff": "100ms"})
    await start_broker()
    await start_pool("real")
    log = await events()
    job = farm.job(source)
    assert (await client.submit(job)).accepted
    failed = await log.wait(JobFailed, job.job_id, timeout=30)
    assert [f.final for f in failed] == [True]  # no "will retry" event before it
    info = await client.job(job.job_id)
    assert info.state == "failed" and info.attempts == 1
    assert words in info.reason and "attempts" not in info.reason and len(info.reason) > 10
    assert not log.of(JobDone)


async def test_a_transient_failure_is_retried_with_backoff(farm, start_broker, start_pool, client, events,
                                                           clip) -> None:
    farm.configure(broker={"max_retries": 3, "retry_backoff": "300ms"})
    await start_broker()
    await start_pool("encoder_crash_first")
    log = await events()
    job = farm.job(clip)
    assert (await client.submit(job)).accepted
    done = (await log.wait(JobDone, job.job_id, timeout=40))[0]
    failed = log.of(JobFailed, job.job_id)
    assert done.attempts == 2 and [f.final for f in failed] == [False]
    assert "encoder" in failed[0].reason
    started = sorted(Path(job.out_dir).parent.glob(f"{job.job_id}.running-*"))
    assert len(started) == 2
    # The second attempt waited out the backoff after the first one failed.
    first, second = (p.stat().st_mtime for p in started)
    assert second - first >= 0.3
