"""The edge's farm figures and broker readiness, served from a real broker over real sockets."""

from __future__ import annotations

import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from streamgate.edge.app import build_app

pytestmark = pytest.mark.usefixtures("no_leaks")

FIGURES = {"total_workers", "active_workers", "idle_workers", "unhealthy_workers",
           "total_tasks_processed", "total_tasks_failed", "average_task_time", "queue_length"}


async def test_farm_metrics_and_readiness(farm, start_broker, client, raw_worker) -> None:
    farm.configure(auth={"required": False})
    async with TestClient(TestServer(build_app(farm.config))) as http:
        down = await http.get("/api/v1/farm/metrics")
        assert down.status == 503
        body = await down.json()
        assert body["error"] == "farm unavailable" and "did not answer" in body["detail"]
        started = time.monotonic()
        response = await http.get("/api/v1/health")
        health = await response.json()
        # Within a balancer's check timeout (1 s by default), however long the broker would take.
        assert time.monotonic() - started < 1.0
        # The broker is advisory: playback never needs it and uploads queue while it is away, so
        # an edge without it stays ready (a balancer keeps it) and says what is missing.
        assert health["checks"]["broker"]["ok"] is False
        assert response.status == 200 and health["status"] == "ready" and health["warnings"] == ["broker"]

        await start_broker()
        await raw_worker("raw-1").ready()
        await client.submit(farm.job("/src.mp4", priority=1))
        await client.submit(farm.job("/src.mp4"))
        response = await http.get("/api/v1/farm/metrics")
        assert response.status == 200
        figures = await response.json()
        assert set(figures) == FIGURES
        # One worker, busy with one job; the other job waits.
        assert figures["total_workers"] == 1 and figures["active_workers"] == 1
        assert figures["idle_workers"] == 0 and figures["queue_length"] == 1
        assert figures["total_tasks_processed"] == 0 and figures["average_task_time"] == 0.0
        health = await (await http.get("/api/v1/health")).json()
        assert health["checks"]["broker"] == {"ok": True, "detail": "1 workers, 1 queued"}
