"""The ``farm`` role of a fleet: the farm's pool, converging on the control plane's decision.

On a single node the pool scales itself from the broker's queue (farm/scaling.py). In a fleet
every farm sees the same queue, so each would grow as if it were alone; instead each follows the
decision control publishes in Consul KV (``<kv_prefix>/scaling/decision``) and runs its share,
``per_farm`` workers, never retiring a busy one. Until a decision exists (control not running
yet, or Consul down) the pool keeps scaling on its own, as on a single node.

Workers reach the broker at ``broker.host``; with failover, point it at Consul DNS
(``streamgate-broker.service.consul``, passing instances only) so each worker's fresh socket
after a broker loss resolves the new leader (docs/control-plane.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from streamgate.common.consul.discovery import Discovery
from streamgate.common.service import ServiceContext

log = logging.getLogger("streamgate.fleet_farm")


def fleet_pool_class() -> type:
    from streamgate.farm.pool import Pool

    class FleetPool(Pool):
        """A :class:`~streamgate.farm.pool.Pool` whose target comes from the published decision."""

        target: int | None = None

        def follow(self, per_farm: int) -> None:
            self.target = per_farm

        def wanted(self) -> int | None:
            if self.target is None:
                return None
            live = self.live()
            busy = sum(1 for w in live if w.state == "busy")
            return max(busy, self.policy.min_workers, min(self.policy.max_workers, self.target))

        async def scale(self) -> None:
            want = self.wanted()
            if want is None:
                await super().scale()
                return
            self.converge(want, "fleet decision")

    return FleetPool


async def follow_decisions(pool: Any, discovery: Discovery) -> None:
    async for decision in discovery.follow_scaling():
        log.info("farm: control asks %d workers per farm (%d fleet-wide): %s", decision.per_farm,
                 decision.farm_workers, decision.reason)
        pool.follow(decision.per_farm)


async def serve(ctx: ServiceContext, runner: str | None = None) -> None:
    """farm/pool.py's ``serve``, with the pool following the fleet's scaling decision."""
    from streamgate.common.broker_client import BrokerClient
    from streamgate.farm.metrics import farm_metrics
    from streamgate.farm.worker import DEFAULT_RUNNER

    config = ctx.config
    async with Discovery(config) as discovery:
        client = BrokerClient(await discovery.broker_endpoints(),
                              timeout_s=max(1.0, float(config.broker.heartbeat_interval)))
        pool = fleet_pool_class()(config, runner=runner or DEFAULT_RUNNER,
                                  metrics=farm_metrics() if config.metrics.enabled else None, client=client)
        following = asyncio.create_task(follow_decisions(pool, discovery), name="follow-scaling")
        try:
            await pool.run(ctx.stop, ready=lambda: ctx.ready(f"farm pool: {len(pool.workers)} workers"))
        finally:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
            await client.close()
