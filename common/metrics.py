"""Prometheus in multiprocess mode: every StreamGate process of a node writes to one directory.

``prometheus_client`` picks its value class when first imported, from ``PROMETHEUS_MULTIPROC_DIR``;
so :func:`init_metrics` must run before any module that defines metrics is imported. The
supervisor (``streamgate run``) or systemd (``PROMETHEUS_MULTIPROC_DIR=`` in the farm unit)
provides a clean directory; a role started alone gets one under ``data/run/prometheus``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from streamgate.common.config import Config

ENV = "PROMETHEUS_MULTIPROC_DIR"


def init_metrics(config: Config, *, wipe: bool = False) -> Path:
    """Point prometheus_client at this node's multiprocess directory; returns it."""
    directory = Path(os.environ.get(ENV) or config.metrics_dir)
    if "prometheus_client" in sys.modules and os.environ.get(ENV) != str(directory):
        raise RuntimeError("init_metrics() must run before prometheus_client is imported")
    if wipe and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(directory)
    return directory


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
