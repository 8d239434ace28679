"""Broker failover for a fleet: two (or more) brokers, one leader, job state in Redis.

``streamgate broker`` runs :func:`serve` instead of farm/broker.py's when the node is in a fleet
with Consul (``deployment.mode: fleet``, ``registry.type: consul``). Every broker:

1. says ready as a *standby*: the runner registers it (``streamgate-broker``) with a TTL check
   that this loop reports as ``warning`` ("standby"), so discovery (passing only) never offers it;
2. creates a Consul session bound to that check and waits for the lock
   ``<kv_prefix>/broker/leader`` (common/consul/leadership.py);
3. on winning it, takes a new fencing epoch in Redis, starts the farm's :class:`~streamgate.farm.broker.Broker`
   over :class:`~streamgate.farm.journal_redis.RedisJournal` (recovering every accepted job), binds
   its sockets and turns its check ``passing``; workers and edges find it through discovery;
4. serves until stopped (then releases the lock: the standby takes over at once) or until the
   lock is lost (then it stops at once and exits 1; systemd restarts it as a standby).

A leader that is killed stops refreshing its TTL check: Consul turns it critical after
``registry.ttl``, which invalidates the session and frees the lock for the standby after
``control.broker_lock_delay``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from streamgate.common.config import BrokerEndpoints, Config
from streamgate.common.consul.client import consul_client
from streamgate.common.consul.discovery import Discovery
from streamgate.common.consul.leadership import LeaderLock, LeadershipLost
from streamgate.common.consul.registry import registration_for
from streamgate.common.service import ServiceContext

log = logging.getLogger("streamgate.failover")


def lock_key(config: Config) -> str:
    return f"{config.registry.kv_prefix.strip('/')}/broker/leader"


def journal_prefix(config: Config) -> str:
    return config.redis_keys.broker


def failover_enabled(config: Config) -> bool:
    return config.deployment.mode == "fleet" and config.registry.type == "consul"


class Leadership:
    """This broker's role, as its TTL check reports it."""

    def __init__(self) -> None:
        self.leading = False

    def probe(self) -> tuple[Any, str]:
        return ("passing", "leader") if self.leading else ("warning", "standby: waiting for the broker lock")


async def serve(ctx: ServiceContext) -> None:
    """The ``broker`` role of a fleet: stand by, lead when the lock is ours, step down when it is not."""
    # Everything slow to import is imported before standing by: the TTL check (and with it the
    # lock's session) must not lapse while a new leader blocks its loop on imports.
    import redis.asyncio  # noqa: F401

    from streamgate.farm.broker import Broker
    from streamgate.farm.journal_redis import RedisJournal

    config = ctx.config
    registration = registration_for("broker", config)
    leadership = Leadership()
    ctx.health_probe = leadership.probe
    metrics = None
    if config.metrics.enabled:
        from streamgate.farm.metrics import farm_metrics

        metrics = farm_metrics()
    ctx.ready("broker standby")
    holder = f"{registration.service_id} tcp://{registration.address}:{config.broker.frontend_port}"
    async with consul_client(config.registry) as client:
        lock = LeaderLock(client, lock_key(config), check_id=registration.check_id, holder=holder,
                          lock_delay_s=float(config.control.broker_lock_delay),
                          wait_s=float(config.registry.watch_wait))
        if await lock.create_session(ctx.stop) is None or not await lock.acquire(ctx.stop):
            await lock.release()
            return
        journal = RedisJournal.from_url(config.cache.redis_url, journal_prefix(config))
        epoch = await journal.take_epoch()
        # Bind on broker.bind_host: broker.host is where clients look (it may be a Consul DNS name).
        b = config.broker
        endpoints = BrokerEndpoints(frontend=f"tcp://{b.bind_host}:{b.frontend_port}",
                                    backend=f"tcp://{b.bind_host}:{b.backend_port}",
                                    publisher=f"tcp://{b.bind_host}:{b.publisher_port}")
        broker = Broker(config, journal, endpoints=endpoints, metrics=metrics)
        await broker.start()
        leadership.leading = True
        # Be discoverable now rather than at the registrar's next refresh.
        await client.agent.check.ttl_pass(registration.check_id, "leader")
        ctx.status(f"broker leader (epoch {epoch}): {holder}")
        log.info("broker leads (epoch %d) on %s", epoch, holder)
        running = asyncio.create_task(broker.run(ctx.stop), name="broker-run")
        watching = asyncio.create_task(lock.watch_lost(ctx.stop), name="broker-lock-watch")
        try:
            done, _ = await asyncio.wait({running, watching}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # LeadershipLost or a broker failure ends this role with an error
        except LeadershipLost:
            log.error("broker lost the leader lock; stepping down at once")
            raise
        finally:
            leadership.leading = False
            for task in (running, watching):
                task.cancel()
            await asyncio.gather(running, watching, return_exceptions=True)
            await broker.close()
            await lock.release()


def discovered_worker(config: Config, discovery: Discovery, **kwargs: Any) -> Any:
    """A farm worker that asks discovery for the leader's backend before every session.

    The farm's :class:`~streamgate.farm.worker.Worker` reconnects on a fresh socket after the
    broker goes silent; this subclass only changes *where* each new session connects.
    """
    from streamgate.common.protocol import Done, Failed, HandBack
    from streamgate.farm.worker import Worker

    class DiscoveredWorker(Worker):
        async def session(self) -> str:
            self.endpoint = (await discovery.broker_endpoints()).backend
            return await super().session()

        async def _hello(self) -> None:
            # A run that finished while no broker was reachable left its result in the outbox;
            # farm/worker.py's READY names only a running job or a result already sent, so the new
            # leader would see a plain READY, then drop the DONE of a lease it still holds, and run
            # the job again. Claim it as the result "sent but unsure", which READY does name.
            final = next((m for m in self._outbox if isinstance(m, Done | Failed | HandBack)), None)
            if self.current is None and self._unsure is None and final is not None:
                self._outbox.remove(final)
                self._unsure = final
            await super()._hello()

    return DiscoveredWorker(config, **kwargs)
