"""Job runners the farm tests load into real worker processes (``runner("name")`` in conftest).

Each one runs the REAL pipeline; some first wait at a gate the test controls, or stall, so a
fault can be injected while the job is provably running. Keys starting with ``test_`` in a
job's settings are read here and removed before the pipeline sees the settings.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import msgspec

from streamgate.common.media import TranscodeProgress, TranscodeResult
from streamgate.farm.worker import JobCancelled, JobRun, run_pipeline


def _pipeline(run: JobRun) -> TranscodeResult:
    settings = {k: v for k, v in run.job.settings.items() if not k.startswith("test_")}
    job = msgspec.structs.replace(run.job, settings=settings)
    return run_pipeline(JobRun(job=job, attempt=run.attempt, config=run.config,
                               on_progress=run.on_progress, cancel=run.cancel))


def real(run: JobRun) -> TranscodeResult:
    return _pipeline(run)


def _started_marker(run: JobRun) -> None:
    """Tell the test which attempt is running now (a file it polls for)."""
    marker = Path(run.job.out_dir).parent / f"{run.job.job_id}.running-{run.attempt}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    # Written whole, then renamed: a test that sees the marker can read the pid at once.
    partial = marker.with_name(marker.name + ".partial")
    partial.write_text(str(os.getpid()))
    partial.rename(marker)


def gated(run: JobRun) -> TranscodeResult:
    """Attempts listed in ``test_gate_attempts`` report a first frame, then wait for the file
    ``<job_id>.release`` next to the output dir, or for cancel; other attempts run at once."""
    _started_marker(run)
    if run.attempt in run.job.settings.get("test_gate_attempts", [1]):
        run.on_progress(TranscodeProgress(stage="decode", frames_done=1, frames_total=15, fraction=0.05))
        release = Path(run.job.out_dir).parent / f"{run.job.job_id}.release"
        while not release.exists():
            if run.cancel.wait(0.02):
                raise JobCancelled("cancelled at the gate")
    return _pipeline(run)


def stall_first(run: JobRun) -> TranscodeResult:
    """Attempt 1 reports one frame and then hangs, deaf to cancel: a wedged pipeline. The worker
    must be killed (it kills itself after abort_grace) and the job retried elsewhere."""
    _started_marker(run)
    if run.attempt == 1:
        run.on_progress(TranscodeProgress(stage="decode", frames_done=1, fraction=0.05))
        threading.Event().wait()  # forever
    return _pipeline(run)


def gated_mid(run: JobRun) -> TranscodeResult:
    """Like :func:`gated`, but the gate is inside the pipeline: at its first "encode" progress the
    decoder blocks in its callback while the encoder processes and the frame ring exist, so a
    kill or a drain lands mid-encode."""
    if run.attempt not in run.job.settings.get("test_gate_attempts", [1]):
        _started_marker(run)
        return _pipeline(run)
    release = Path(run.job.out_dir).parent / f"{run.job.job_id}.release"
    gated = [False]

    def on_progress(p: TranscodeProgress) -> None:
        run.on_progress(p)
        if not gated[0] and p.stage == "encode":
            gated[0] = True
            _started_marker(run)
            while not release.exists():
                if run.cancel.wait(0.02):
                    return  # the pipeline sees the cancel event and stops itself

    return run_pipeline(JobRun(job=msgspec.structs.replace(run.job, settings={
        k: v for k, v in run.job.settings.items() if not k.startswith("test_")}),
        attempt=run.attempt, config=run.config, on_progress=on_progress, cancel=run.cancel))


def encoder_crash_first(run: JobRun) -> TranscodeResult:
    """Attempt 1 fails as an encoder crash would (a transient error); later attempts run."""
    from streamgate.farm.pipeline.errors import EncoderFailedError

    _started_marker(run)
    if run.attempt == 1:
        raise EncoderFailedError("encoder 240p was killed by SIGSEGV")
    return _pipeline(run)
