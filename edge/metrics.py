"""The edge's Prometheus series and the ``/metrics`` route.

The metric objects are created on first use, not at import, because prometheus_client picks its
multiprocess mode when first imported (``common.metrics.init_metrics`` runs before that in
``streamgate edge``). ``_created`` series are disabled: they double the series count and
multiprocess mode cannot merge them. Label children are resolved once and kept, since the fast
path counts every request.
"""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web

ROUTE_CLASSES = ("playlist", "init", "segment", "poster", "preflight", "error")
TIERS = ("memory", "redis", "disk", "origin")
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0, 10.0)


class EdgeMetrics:
    def __init__(self) -> None:
        import prometheus_client as pc

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
        self._requests: dict[tuple[str, int], Any] = {}
        self._bytes = {r: self.bytes.labels(r) for r in ROUTE_CLASSES}
        self._latency = {r: self.latency.labels(r) for r in ROUTE_CLASSES}
        self._cache = {(t, r): self.cache.labels(t, r) for t in TIERS for r in ("hit", "miss", "error")}

    def observe(self, route: str, status: int, sent: int, seconds: float) -> None:
        child = self._requests.get((route, status))
        if child is None:
            child = self._requests[(route, status)] = self.requests.labels(route, str(status))
        child.inc()
        if sent:
            self._bytes[route].inc(sent)
        self._latency[route].observe(seconds)

    def tier(self, tier: str, result: str) -> None:
        self._cache[(tier, result)].inc()


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
    from ..common.metrics import ENV, render_metrics

    if os.environ.get(ENV):
        return render_metrics()
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


async def metrics_route(request: web.Request) -> web.Response:
    edge_metrics()  # the series exist (at zero) before the first request
    body, content_type = render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def setup(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics_route)
