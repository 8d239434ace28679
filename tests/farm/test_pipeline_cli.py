"""``streamgate transcode``: the pipeline from the command line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from streamgate.farm.pipeline.gate import check_ladder


def streamgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamgate", *args], capture_output=True, text=True, timeout=90)


def test_transcode_command_makes_a_ladder_and_prints_stage_timings(tmp_path: Path,
                                                                   video_factory: Callable[..., Path]) -> None:
    source = video_factory("small.mp4", seconds=2.0, width=320, height=240)
    done = streamgate("transcode", str(source), "--out", str(tmp_path / "out"), "--renditions", "240,180",
                      "--preset", "superfast", "--segment-seconds", "1")
    assert done.returncode == 0, done.stderr
    for word in ("240p", "180p", "audio", "stage timings", "probe", "encode:240p", "gate", "total"):
        assert word in done.stdout
    check_ladder(tmp_path / "out")
    assert (tmp_path / "out" / "240p" / "seg-00002.m4s").is_file()


def test_transcode_command_fails_with_the_reason(tmp_path: Path) -> None:
    source = tmp_path / "notes.mp4"
    source.write_text("not a video\n")
    done = streamgate("transcode", str(source), "--out", str(tmp_path / "out"), "--no-progress")
    assert done.returncode == 1
    assert "transcode failed: not a readable media file" in done.stderr


def test_transcode_command_rejects_bad_renditions(tmp_path: Path) -> None:
    done = streamgate("transcode", "x.mp4", "--out", str(tmp_path), "--renditions", "big,small")
    assert done.returncode == 2 and "renditions" in done.stderr


def test_transcode_command_cancels_on_sigterm(tmp_path: Path, video_factory: Callable[..., Path]) -> None:
    import signal

    from support import wait_until

    source = video_factory("six.mp4", seconds=6.0, width=320, height=240)
    cli = subprocess.Popen([sys.executable, "-m", "streamgate", "transcode", str(source), "--out",
                            str(tmp_path / "out"), "--renditions", "240,180", "--preset", "medium",
                            "--segment-seconds", "1", "--no-progress"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (tmp_path / "out" / "240p" / "init.mp4").exists() or cli.poll() is not None,
                   timeout=30, what="the encoders to start")
        cli.send_signal(signal.SIGTERM)
        _, err = cli.communicate(timeout=30)
        assert cli.returncode == 130, err
        assert "transcode failed: cancelled" in err
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
