"""Start the kernel writing a file range to disk without waiting for it: ``sync_file_range(2)``
with ``SYNC_FILE_RANGE_WRITE`` (Linux; Python's ``os`` has no binding).

An ``fsync``/``fdatasync`` is a barrier: it waits for the data *and* flushes the disk's cache, and
on a virtual disk each flush can cost the host a sync of its own. Writing a large body and then
one ``fdatasync`` leaves the disk idle until the end; an ``fdatasync`` every few megabytes adds
barriers. Starting the writeback of each range as soon as it is written keeps the disk busy while
the rest arrives and leaves the one barrier that makes it durable little to wait for. It promises
nothing about durability: callers still ``fdatasync`` before they acknowledge anything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

SYNC_FILE_RANGE_WRITE = 2


def _load() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load()


def start(fd: int, offset: int, length: int) -> None:
    """Queue ``length`` bytes of ``fd`` at ``offset`` for writeback; a no-op where unsupported
    (the later fdatasync does all the work then). Errors are left to that fdatasync, which
    reports them where it matters."""
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)
