"""The farm's Prometheus metrics (multiprocess mode, see ``common/metrics.py``).

Built on first use, never at import: ``common.metrics.init_metrics`` must run before
``prometheus_client`` is imported, and a process that did not ask for metrics (a test, the CLI)
must not import it at all.
"""

from __future__ import annotations

import functools

from streamgate.common.media import TranscodeResult


class FarmMetrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        from streamgate.common.metrics import reserve_files

        reserve_files()  # a spawned worker imports prometheus_client afresh (common/metrics.py)

        self.jobs = Counter("streamgate_farm_jobs_total", "Jobs by outcome (done, failed = dead-lettered,"
                            " retried, cancelled)", ["outcome"])
        # The broker is one process: its gauges are "livesum" so a dead broker's value disappears.
        self.queue_length = Gauge("streamgate_farm_queue_length", "Jobs waiting in the broker's queue",
                                  multiprocess_mode="livesum")
        self.running = Gauge("streamgate_farm_running_jobs", "Jobs leased to workers",
                             multiprocess_mode="livesum")
        self.workers = Gauge("streamgate_farm_pool_workers", "Worker processes of the pool",
                             multiprocess_mode="livesum")
        self.encode_fps = Histogram("streamgate_farm_encode_fps", "Source frames per second of a job",
                                    buckets=(5, 10, 25, 50, 100, 200, 400, 800, 1600))
        self.stage_seconds = Histogram("streamgate_farm_stage_seconds", "Wall seconds per pipeline stage",
                                       ["stage"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                                                           120, 300, 600, 1800))
        self.job_seconds = Histogram("streamgate_farm_job_seconds", "Wall seconds of a successful job",
                                     buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))


@functools.cache
def farm_metrics() -> FarmMetrics:
    return FarmMetrics()


def observe_result(result: TranscodeResult, elapsed_s: float) -> None:
    metrics = farm_metrics()
    metrics.job_seconds.observe(elapsed_s)
    if elapsed_s > 0 and result.frames:
        metrics.encode_fps.observe(result.frames / elapsed_s)
    for stage, seconds in result.stage_seconds.items():
        # encode:<rung> stages keep their rung: the slow rung is visible.
        metrics.stage_seconds.labels(stage).observe(seconds)


