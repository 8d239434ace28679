"""Free space of the data dir as Prometheus gauges, read at scrape time.

Readiness turns degraded when free space falls below ``storage.min_free_space``
(edge/health.py); these gauges let Prometheus see the same fact without polling readiness, so
the monitoring kit's StorageDegraded alert (deploy/monitoring/) has a series to watch.
"""

from __future__ import annotations

import functools
import shutil
from typing import Any

from streamgate.common.config import Config


@functools.cache
def _gauges() -> tuple[Any, Any]:
    from prometheus_client import Gauge

    from streamgate.common.metrics import reserve_files

    reserve_files()
    # livemin/livemax: the edge processes of a node share the disk; a dead one's value goes.
    free = Gauge("streamgate_storage_free_bytes", "Free bytes on the file system of storage.data_dir",
                 multiprocess_mode="livemin")
    floor = Gauge("streamgate_storage_min_free_bytes", "storage.min_free_space: readiness degrades below it",
                  multiprocess_mode="livemax")
    return free, floor


def update(config: Config) -> None:
    root = config.storage.root
    usage = shutil.disk_usage(root if root.exists() else root.parent)
    free, floor = _gauges()
    free.set(usage.free)
    floor.set(int(config.storage.min_free_space))
