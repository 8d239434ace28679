"""Prometheus multiprocess files on a full filesystem (issue 14): no SIGBUS, a scrape still works.

prometheus_client grows its files with truncate and writes through a map: on a full tmpfs the
first write was SIGBUS (the broker and the edge died of it on every restart). A child process
does what a role does (init_metrics, then counters) on a 1 MiB tmpfs the test mounts (root).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import fill_disk, mounted_tmpfs

CHILD = """
import os, sys
from streamgate.common.config import config_from_tree
from streamgate.common.metrics import init_metrics, render_metrics
directory = sys.argv[1]
init_metrics(config_from_tree({"metrics": {"multiproc_dir": directory}}))
import prometheus_client as pc
early = pc.Counter("sg_test_early_total", "made before the disk fills", ["n"])
early.labels("0").inc()
if sys.argv[2] == "fill":
    fd = os.open(os.path.join(directory, "filler.bin"), os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 65536)
    except OSError:
        pass
    try:
        while True:
            os.write(fd, b"x")
    except OSError:
        pass
late = pc.Gauge("sg_test_late", "made on the full disk", ["n"], multiprocess_mode="livesum")
for n in range(2000):  # past the first 64 KiB of a file: it must grow
    early.labels(str(n)).inc()
    late.labels(str(n)).set(n)
assert early.labels("0")._value.get() == 2.0 and late.labels("1999")._value.get() == 1999
text, _ = render_metrics()
print("scraped", text.count(b"sg_test_early_total{"))
"""


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs needs root (running as uid {os.geteuid()})")
    with mounted_tmpfs(tmp_path / "metrics-disk", "1m") as mount:
        yield mount


@pytest.mark.parametrize("when", ["before", "fill"])
def test_metrics_on_a_full_disk_neither_crash_nor_break_the_scrape(tiny_disk: Path, when: str) -> None:
    if when == "before":  # the disk is full before the process starts (a restart on a full disk)
        fill_disk(tiny_disk)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS", "STREAMGATE"))}
    child = subprocess.run([sys.executable, "-c", CHILD, str(tiny_disk), when], env=env,
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, (child.returncode, child.stderr[-3000:])  # -7 was SIGBUS
    assert "scraped" in child.stdout
    # Whatever is left in the directory is a file every scrape can read.
    for path in tiny_disk.glob("*.db"):
        assert path.stat().st_size >= 8, path
