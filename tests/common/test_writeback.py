"""common/writeback.py: sync_file_range bound on Linux, starting writeback changes no byte."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from streamgate.common import writeback


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_writeback_starts_on_linux_and_keeps_the_bytes(tmp_path: Path) -> None:
    assert writeback._sync_file_range is not None
    data = os.urandom(3 * 2**20 + 5)
    path = tmp_path / "f.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
        writeback.start(fd, 0, len(data))
        writeback.start(fd, 2**20, 0)  # nothing to do
        os.fdatasync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    # A bad descriptor is left to the fdatasync that follows: start itself never raises.
    writeback.start(fd, 0, 10)
    with pytest.raises(OSError):
        os.fdatasync(fd)
