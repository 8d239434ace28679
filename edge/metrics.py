"""The edge's Prometheus series and the ``/metrics`` route.

The metric objects are created on first use, not at import, because prometheus_client picks its
multiprocess mode when first imported (``common.metrics.init_metrics`` runs before that in
``streamgate edge``). ``_created`` series are disabled: they double the series count and
multiprocess mode cannot merge them. Label children are resolved once and kept, since the fast
path counts every request.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left

from aiohttp import web

ROUTE_CLASSES = ("playlist", "init", "segment", "poster", "preflight", "error")
TIERS = ("memory", "redis", "disk", "origin")
FLUSH_INTERVAL_S = 1.0
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0, 10.0)


class EdgeMetrics:
    """The series, fed from per-process tallies flushed every ``FLUSH_INTERVAL_S``.

    A multiprocess-mode increment is a lock, a getpid() and an mmap write; four of them per
    request cost more than the rest of a fast-path answer. So requests are tallied in plain
    dicts and the tallies added to the shared files once a second (and before a local scrape).
    """

    def __init__(self) -> None:
        import prometheus_client as pc

        from streamgate.common.metrics import reserve_files

        reserve_files()  # a spawned edge process maps its files like any other (common/metrics.py)
        pc.disable_created_metrics()
        self.requests = pc.Counter("streamgate_edge_requests_total",
                                   "Playback requests answered, by route class and status.",
                                   ["route", "status"])
        self.bytes = pc.Counter("streamgate_edge_response_bytes_total",
                                "Body bytes handed to the kernel, by route class.", ["route"])
        self.latency = pc.Histogram("streamgate_edge_request_duration_seconds",
                                    "Time from request parsed to response written, by route class.",
                                    ["route"], buckets=LATENCY_BUCKETS)
        self.cache = pc.Counter("streamgate_edge_cache_requests_total",
                                "Cache tier lookups by tier (memory, redis, disk, origin) and result.",
                                ["tier", "result"])
        self._bytes = {r: self.bytes.labels(r) for r in ROUTE_CLASSES}
        self._latency = {r: self.latency.labels(r) for r in ROUTE_CLASSES}
        self._cache = {(t, r): self.cache.labels(t, r) for t in TIERS for r in ("hit", "miss", "error")}
        self._bounds = list(LATENCY_BUCKETS) + [float("inf")]
        self._tally_requests: dict[tuple[str, int], int] = {}
        self._tally_bytes = dict.fromkeys(ROUTE_CLASSES, 0)
        # route -> [sum of seconds, count per bucket...]
        self._tally_latency = {r: [0.0] * (len(self._bounds) + 1) for r in ROUTE_CLASSES}
        self._tally_cache: dict[tuple[str, str], int] = {}

    def observe(self, route: str, status: int, sent: int, seconds: float) -> None:
        key = (route, status)
        tally = self._tally_requests
        tally[key] = tally.get(key, 0) + 1
        self._tally_bytes[route] += sent
        latency = self._tally_latency[route]
        latency[0] += seconds
        latency[bisect_left(self._bounds, seconds) + 1] += 1

    def tier(self, tier: str, result: str) -> None:
        key = (tier, result)
        self._tally_cache[key] = self._tally_cache.get(key, 0) + 1

    def flush(self) -> None:
        """Add the tallies to the series (the shared files in multiprocess mode)."""
        requests, self._tally_requests = self._tally_requests, {}
        for (route, status), n in requests.items():
            self.requests.labels(route, str(status)).inc(n)
        for route, n in self._tally_bytes.items():
            if n:
                self._bytes[route].inc(n)
                self._tally_bytes[route] = 0
        for route, latency in self._tally_latency.items():
            if any(latency[1:]):
                child = self._latency[route]
                # Histogram.observe() adds one observation; these add a batch the same way.
                child._sum.inc(latency[0])
                for i, count in enumerate(latency[1:]):
                    if count:
                        child._buckets[i].inc(count)
                self._tally_latency[route] = [0.0] * len(latency)
        cache, self._tally_cache = self._tally_cache, {}
        for key, n in cache.items():
            self._cache[key].inc(n)


_metrics: EdgeMetrics | None = None


def edge_metrics() -> EdgeMetrics:
    global _metrics
    if _metrics is None:
        _metrics = EdgeMetrics()
    return _metrics


def route_class(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    if name.endswith((".m3u8", ".mpd")):
        return "playlist"
    if name.endswith(".jpg"):
        return "poster"
    if name.startswith("init"):
        return "init"
    return "segment"


def render() -> tuple[bytes, str]:
    from streamgate.common.metrics import ENV, render_metrics

    if os.environ.get(ENV):
        return render_metrics()
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


async def metrics_route(request: web.Request) -> web.Response:
    from streamgate.edge import storage_metrics
    from streamgate.edge.keys import CONFIG

    edge_metrics().flush()  # this process's tallies; the others flush on their own each second
    if CONFIG in request.app:
        storage_metrics.update(request.app[CONFIG])
    body, content_type = render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def flush_forever() -> None:
    metrics = edge_metrics()
    try:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            metrics.flush()
    finally:
        metrics.flush()


def setup(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics_route)
