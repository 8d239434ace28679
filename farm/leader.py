"""A fleet's farm follows the broker leader through Consul, as the edges do.

The broker is whichever holds the leader lock (farm/failover.py); discovery
(common/consul/discovery.py ``follow_broker``) yields its endpoints now and on every change. Each
worker process retargets its DEALER (a fresh session at once, not after a heartbeat expiry), the
pool retargets its client, and the farm's TTL check is ``passing`` only while the pool hears a
broker: a farm attached to none is ``critical``. No static ``broker.host`` is needed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from streamgate.common.broker_client import BrokerClient, BrokerError, BrokerUnavailable
from streamgate.common.config import BrokerEndpoints

log = logging.getLogger("streamgate.farm_leader")

Retarget = Callable[[BrokerEndpoints], Awaitable[None] | None]


async def follow_leader(discovery: Any, retarget: Retarget) -> None:
    """Call ``retarget`` with the leader's endpoints now and each time leadership moves."""
    async for endpoints in discovery.follow_broker():
        outcome = retarget(endpoints)
        if inspect.isawaitable(outcome):
            await outcome


class Attachment:
    """Whether the pool hears a broker: a ping (STATS) every heartbeat, as the farm's health."""

    def __init__(self, client: BrokerClient, interval_s: float, expiry_s: float) -> None:
        self.client = client
        self.interval_s = interval_s
        self.expiry_s = expiry_s
        self.last_ok: float | None = None
        self.endpoint = ""

    async def run(self) -> None:
        while True:
            try:
                await self.client.stats()
                self.last_ok = time.monotonic()
                self.endpoint = self.client.endpoints.frontend
            except (BrokerUnavailable, BrokerError) as exc:
                log.debug("farm: no answer from the broker at %s: %s", self.client.endpoints.frontend, exc)
            await asyncio.sleep(self.interval_s)

    def probe(self) -> tuple[Literal["passing", "warning", "critical"], str]:
        """The farm's TTL check (common/consul/registry.py): not passing without a broker."""
        if self.last_ok is None:
            return "critical", "attached to no broker yet"
        silent = time.monotonic() - self.last_ok
        if silent > self.expiry_s:
            return "critical", f"attached to no broker: {self.client.endpoints.frontend} silent for {silent:.1f}s"
        return "passing", f"broker {self.endpoint}"


def attachment_for(client: BrokerClient, config: Any) -> Attachment:
    heartbeat = float(config.broker.heartbeat_interval)
    return Attachment(client, interval_s=heartbeat,
                      expiry_s=max(2 * heartbeat, heartbeat * config.broker.heartbeat_liveness))
