"""``GET /api/v1/web/dashboard``: what the farm dashboard shows, in one answer.

The farm's figures (the same as ``/api/v1/farm/metrics``), the running and recently finished jobs
with progress and ETA (from the catalog, which the broker's events keep current: edge/progress.py),
the jobs finished per minute over the last hour, and in a fleet the instances with their health
(from the control service's ``/api/v1/fleet``).

The broker keeps only running totals, so the throughput history is sampled here: each edge
process records the broker's ``total_tasks_processed`` every ``SAMPLE_INTERVAL_S`` and charts the
differences. A fresh edge therefore starts with an empty chart that fills over the hour.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from streamgate.common.config import Config
from streamgate.edge import stores
from streamgate.edge.access.auth import identity
from streamgate.edge.access.ratelimit import enforce
from streamgate.edge.intake.farm_link import FARM_CLIENT
from streamgate.edge.keys import CONFIG, DISCOVERY
from streamgate.edge.videos import eta

SAMPLE_INTERVAL_S = 10.0
HISTORY_S = 3600.0
BUCKET_S = 60
RECENT_JOBS = 8
# The fleet view is rebuilt by the control service every few seconds: asking more often is waste.
FLEET_CACHE_S = 5.0
FLEET_TIMEOUT_S = 1.5


class Sample(msgspec.Struct, array_like=True):
    at: float
    processed: int
    failed: int


class DashboardState:
    """Per edge process: the throughput samples and the last fleet answer."""

    def __init__(self) -> None:
        self.samples: collections.deque[Sample] = collections.deque()
        self.farm: dict[str, Any] | None = None
        self.farm_error = ""
        self.farm_at = 0.0
        self.fleet: dict[str, Any] | None = None
        self.fleet_at = 0.0
        self.lock = asyncio.Lock()

    def record(self, now: float, processed: int, failed: int) -> None:
        self.samples.append(Sample(now, processed, failed))
        while self.samples and self.samples[0].at < now - HISTORY_S - BUCKET_S:
            self.samples.popleft()

    def throughput(self, now: float) -> list[dict[str, float]]:
        """Jobs done and failed per minute, oldest first, the current minute last."""
        buckets = int(HISTORY_S // BUCKET_S)
        end = (now // BUCKET_S + 1) * BUCKET_S
        start = end - buckets * BUCKET_S
        done = [0] * buckets
        failed = [0] * buckets
        previous: Sample | None = None
        for sample in self.samples:
            if previous is not None and sample.at >= start:
                index = min(buckets - 1, int((sample.at - start) // BUCKET_S))
                # A restarted broker starts its totals again from zero.
                d = sample.processed - previous.processed
                f = sample.failed - previous.failed
                done[index] += d if d >= 0 else sample.processed
                failed[index] += f if f >= 0 else sample.failed
            previous = sample
        return [{"t": start + i * BUCKET_S, "done": done[i], "failed": failed[i]} for i in range(buckets)]


STATE = web.AppKey("web_dashboard_state", DashboardState)


async def farm_figures(app: web.Application) -> tuple[dict[str, Any] | None, str]:
    """The broker's figures, asked at most once a second (several pages may be watching)."""
    state = app[STATE]
    async with state.lock:
        now = time.time()
        if now - state.farm_at < 1.0:
            return state.farm, state.farm_error
        try:
            stats = await app[FARM_CLIENT].stats()
        except Exception as exc:  # a farm that is down is shown as down, never an error page
            state.farm, state.farm_error = None, str(exc) or type(exc).__name__
        else:
            state.farm, state.farm_error = msgspec.to_builtins(stats), ""
            last = state.samples[-1].at if state.samples else 0.0
            if now - last >= SAMPLE_INTERVAL_S / 2:
                state.record(now, stats.total_tasks_processed, stats.total_tasks_failed)
        state.farm_at = now
        return state.farm, state.farm_error


async def _control_url(app: web.Application) -> str | None:
    config: Config = app[CONFIG]
    discovery = app.get(DISCOVERY)
    if discovery is not None:
        found = await discovery.instances("control")
        if not found:
            return None
        return f"http://{found[0].address}:{found[0].port}"
    # A single node runs the control service beside the edge (streamgate run).
    return f"http://127.0.0.1:{config.server.control_port}"


async def fleet_view(app: web.Application) -> dict[str, Any] | None:
    state = app[STATE]
    now = time.time()
    if now - state.fleet_at < FLEET_CACHE_S:
        return state.fleet
    state.fleet_at = now
    try:
        url = await _control_url(app)
        if url is None:
            state.fleet = None
            return None
        timeout = aiohttp.ClientTimeout(total=FLEET_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.get(f"{url}/api/v1/fleet") as answer:
            answer.raise_for_status()
            view = await answer.json()
    except Exception:  # no control service (an edge alone): the dashboard shows no fleet
        state.fleet = None
        return None
    state.fleet = {
        "registry": view.get("registry", ""),
        "instances": [{key: item.get(key) for key in ("role", "service_id", "address", "port", "node",
                                                       "version", "status")}
                      for item in view.get("instances", [])],
    }
    return state.fleet


def _job_json(video: Any, caller: str, now: float) -> dict[str, Any]:
    # Another wallet's private video is listed as a job, but not by its title.
    hidden = video.visibility == "private" and video.owner and video.owner != caller
    return {"id": video.id, "title": "(private video)" if hidden else (video.title or video.filename),
            "status": video.status, "progress": round(video.progress, 4), "eta_s": eta(video, now),
            "visibility": video.visibility, "priority": video.priority, "error": video.error or None,
            "started_at": video.started_at, "updated_at": video.updated_at}


async def snapshot(app: web.Application, caller: str) -> dict[str, Any]:
    now = time.time()
    catalog = app[stores.CATALOG]
    farm, farm_error = await farm_figures(app)
    running: list[dict[str, Any]] = []
    for status in ("transcoding", "queued"):
        for video_id in await catalog.with_status(status):
            video = await catalog.get(video_id)
            if video is not None:
                running.append(_job_json(video, caller, now))
    newest, _ = await catalog.page(limit=4 * RECENT_JOBS, offset=0)
    finished = sorted((v for v in newest if v.status in ("ready", "failed")),
                      key=lambda v: v.updated_at, reverse=True)[:RECENT_JOBS]
    return {
        "generated_at": now,
        "farm": farm, "farm_error": farm_error or None,
        "jobs": running,
        "recent": [_job_json(v, caller, now) for v in finished],
        "throughput": {"bucket_s": BUCKET_S, "points": app[STATE].throughput(now)},
        "fleet": await fleet_view(app),
    }


async def dashboard(request: web.Request) -> web.Response:
    caller = identity(request)
    await enforce(request, "api", caller)
    return web.json_response(await snapshot(request.app, caller), headers={"Cache-Control": "no-store"})


async def _sampler(app: web.Application) -> None:
    while True:
        with contextlib.suppress(Exception):
            await farm_figures(app)
        await asyncio.sleep(SAMPLE_INTERVAL_S)


async def sampler_ctx(app: web.Application) -> AsyncIterator[None]:
    app[STATE] = DashboardState()
    task = asyncio.create_task(_sampler(app), name="web-throughput-sampler")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/web/dashboard", dashboard)
