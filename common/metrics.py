"""Prometheus in multiprocess mode: every StreamGate process of a node writes to one directory.

``prometheus_client`` picks its value class when first imported, from ``PROMETHEUS_MULTIPROC_DIR``;
so :func:`init_metrics` must run before any module that defines metrics is imported. The
supervisor (``streamgate run``) or systemd (``PROMETHEUS_MULTIPROC_DIR=`` in the farm unit)
provides a clean directory; a role started alone gets one under ``data/run/prometheus``.

That directory may share a filesystem with uploads (``data/run`` on a single node), and
prometheus_client grows its per-process files with ``truncate`` and then writes through a map: on a
full filesystem the sparse file has no block to give and the first write is SIGBUS, which killed
the broker and the edge on every restart until space returned (issue 14). :func:`reserve_files`
makes every file's blocks real (``posix_fallocate``) before they are mapped; when the disk has no
room the process keeps its figures in private memory instead (not scraped until it restarts).
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import shutil
import struct
import sys
from pathlib import Path
from typing import Any

from streamgate.common.config import Config

ENV = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger("streamgate.metrics")


def init_metrics(config: Config, *, wipe: bool = False) -> Path:
    """Point prometheus_client at this node's multiprocess directory; returns it."""
    directory = Path(os.environ.get(ENV) or config.metrics_dir)
    if "prometheus_client" in sys.modules and os.environ.get(ENV) != str(directory):
        raise RuntimeError("init_metrics() must run before prometheus_client is imported")
    if wipe and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(directory)
    reserve_files()
    return directory


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


def reserve_files() -> None:
    """Make prometheus_client's multiprocess files allocate before they map (idempotent).

    Called by :func:`init_metrics` and by whoever builds metrics in a spawned process (a farm
    worker), since a spawned child imports prometheus_client afresh.
    """
    if not os.environ.get(ENV):
        return
    from prometheus_client import values

    if values.MmapedDict is not _reserved_class():
        values.MmapedDict = _reserved_class()  # type: ignore[misc]


_RESERVED: list[Any] = []


def _reserved_class() -> Any:
    """The subclass, built once on first use: prometheus_client is imported only after init_metrics."""
    if _RESERVED:
        return _RESERVED[0]
    from prometheus_client import mmap_dict

    _INITIAL_SIZE = getattr(mmap_dict, "_INITIAL_MMAP_SIZE", 1 << 16)

    class ReservedMmapedDict(mmap_dict.MmapedDict):
        """prometheus_client's MmapedDict (0.20+: ``_f``, ``_m``, ``_capacity``, ``_used``,
        ``_positions``) with every mapped byte allocated first."""

        def __init__(self, filename: str, read_mode: bool = False) -> None:
            if read_mode:
                super().__init__(filename, read_mode)
                return
            try:
                with open(filename, "a+b") as f:
                    size = os.fstat(f.fileno()).st_size
                    os.posix_fallocate(f.fileno(), 0, max(size, _INITIAL_SIZE))
            except OSError as exc:
                if exc.errno not in _NO_ROOM:
                    raise
                # An empty file would break every scrape of the directory: leave none behind.
                if os.path.exists(filename) and os.stat(filename).st_size == 0:
                    os.unlink(filename)
                self._go_private(filename, exc)
                return
            super().__init__(filename, read_mode)

        def _go_private(self, filename: str, exc: OSError, keep: bytes = b"") -> None:
            log.warning("metrics: no room for %s (%s): this process's figures stay in memory", filename, exc)
            if getattr(self, "_f", None) is not None:
                self._m.close()
                self._f.close()
            self._f = None  # type: ignore[assignment]  # no file: close() releases only the map
            self._fname = filename
            self._capacity = max(_INITIAL_SIZE, len(keep))
            self._m = mmap.mmap(-1, self._capacity)
            if keep:
                self._m[:len(keep)] = keep
            else:
                self._positions = {}
                self._used = 8
                self._m[0:4] = struct.pack("i", self._used)

        def _init_value(self, key: str) -> None:
            # The parent's own arithmetic: the entry's size, and the capacity it will double to.
            encoded = key.encode("utf-8")
            size = 4 + len(encoded) + (8 - (len(encoded) + 4) % 8) + 16
            capacity = self._capacity
            while self._used + size > capacity:
                capacity *= 2
            if capacity > self._capacity:
                if self._f is None:
                    grown = mmap.mmap(-1, capacity)
                    grown[:self._used] = self._m[:self._used]
                    self._m, self._capacity = grown, capacity
                else:
                    try:
                        os.posix_fallocate(self._f.fileno(), 0, capacity)
                    except OSError as exc:
                        if exc.errno not in _NO_ROOM:
                            raise
                        self._go_private(self._fname, exc, keep=self._m[:self._used])
                        return self._init_value(key)
            super()._init_value(key)

        def close(self) -> None:
            if self._f is None and self._m is not None:
                self._m.close()
                self._m = None
                return
            super().close()

    _RESERVED.append(ReservedMmapedDict)
    return ReservedMmapedDict


def render_metrics() -> tuple[bytes, str]:
    """The node's metrics in the Prometheus text format, all processes merged."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    if os.environ.get(ENV):
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Drop a dead process's live gauges (call from whoever reaps it)."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
