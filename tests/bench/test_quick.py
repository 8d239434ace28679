"""Smoke runs of the issue 18 benchmarks' ``--quick`` modes: each must run to the end and print
its ratio and load-average lines. Not a speed assertion: benchmarks are not timed tests."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
RATIO = re.compile(r"^ratio .+: \d+\.\d\dx \(goal .+\) (met|NOT met)$", re.M)
LOAD = re.compile(r"^load average: \d+\.\d\d \d+\.\d\d \d+\.\d\d \(\d+ CPUs\)$", re.M)


@pytest.mark.parametrize("name", ["catalog", "broker", "quality", "uploads", "upload_parallel"])
def test_quick_mode_prints_its_ratios(name: str, tmp_path: Path) -> None:
    if name in ("quality", "short_clip", "concurrency", "first_frame") and shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    run = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--quick"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=110)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert RATIO.search(run.stdout), run.stdout[-3000:]
    assert LOAD.search(run.stdout), run.stdout[-3000:]
