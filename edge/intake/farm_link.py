"""The transcoder's figures on the edge: ``GET /api/v1/farm/metrics`` and a "broker" readiness check.

Both ask the farm broker over one :class:`~streamgate.common.broker_client.BrokerClient` per edge process
(kept under ``FARM_CLIENT``; job submission and the events follower use it too, see
edge/intake/submission.py). In a fleet with Consul it follows the broker leader. A broker that does not
answer gives 503 with a reason, never a hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from streamgate.common.broker_client import BrokerClient, BrokerError, BrokerUnavailable
from streamgate.common.config import Config
from streamgate.edge.errors import HTTPError
from streamgate.edge.keys import ADVISORY_CHECKS, CONFIG, DISCOVERY, READINESS_CHECKS

FARM_CLIENT = web.AppKey("farm_client", BrokerClient)
# The figures answer quickly or not at all: a health probe must not wait out a long timeout.
TIMEOUT_S = 2.0


async def farm_metrics(request: web.Request) -> web.Response:
    client = request.app[FARM_CLIENT]
    try:
        stats = await client.stats()
    except (BrokerUnavailable, BrokerError) as exc:
        raise HTTPError(503, "farm unavailable", str(exc), {"Retry-After": "5"}) from None
    return web.json_response({
        "total_workers": stats.total_workers,
        "active_workers": stats.active_workers,
        "idle_workers": stats.idle_workers,
        "unhealthy_workers": stats.unhealthy_workers,
        "total_tasks_processed": stats.total_tasks_processed,
        "total_tasks_failed": stats.total_tasks_failed,
        "average_task_time": stats.average_task_time,
        "queue_length": stats.queue_length,
    })


async def broker_check(app: web.Application) -> tuple[bool, str]:
    try:
        stats = await app[FARM_CLIENT].stats()
    except (BrokerUnavailable, BrokerError) as exc:
        return False, str(exc)
    return True, f"{stats.total_workers} workers, {stats.queue_length} queued"


async def _follow_leader(discovery: Any, client: BrokerClient) -> None:
    """In a fleet with Consul, the broker is whichever holds the leader lock (farm/failover.py):
    follow discovery and retarget the client when the leader changes."""
    async for endpoints in discovery.follow_broker():
        await client.retarget(endpoints)


def follows_leader(config: Config) -> bool:
    return config.deployment.mode == "fleet" and config.registry.type == "consul"


async def client_ctx(app: web.Application) -> AsyncIterator[None]:
    """The process's one broker client; the intake context (its submitter, its events follower)
    runs after it."""
    config = app[CONFIG]
    broker = config.broker
    # Silent for two heartbeat expiries is down (capped: a probe must answer fast).
    timeout_s = min(TIMEOUT_S, max(0.5, 2 * float(broker.heartbeat_interval) * broker.heartbeat_liveness))
    discovery = app.get(DISCOVERY) if follows_leader(config) else None
    # Start on the current leader, so the first submit does not go to the static address
    # (discovery answers at once, or within its first-answer timeout when Consul hangs).
    endpoints = await discovery.broker_endpoints() if discovery is not None else config.broker_endpoints
    client = BrokerClient(endpoints, timeout_s=timeout_s)
    app[FARM_CLIENT] = client
    app[READINESS_CHECKS]["broker"] = broker_check
    app[ADVISORY_CHECKS].add("broker")
    follower: asyncio.Task[None] | None = None
    if discovery is not None:
        follower = asyncio.create_task(_follow_leader(discovery, client), name="farm-broker-discovery")
    yield
    if follower is not None:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    await client.close()


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/farm/metrics", farm_metrics)
