"""A fleet's farm pool converges on the control plane's published decision (its per-farm share)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from agent_api import Agent, free_port
from support import async_wait_until

from streamgate.common.config import config_from_tree
from streamgate.common.consul.client import consul_client
from streamgate.common.consul.discovery import Discovery
from streamgate.control.fleet import BrokerFigures, FleetView
from streamgate.control.scaling import decide
from streamgate.control.service import ControlState
from streamgate.farm.broker import Broker
from streamgate.farm.fleet_pool import fleet_pool_class, follow_decisions
from streamgate.farm.journal import SqliteJournal


def _view(config, queue: int, workers: int, busy: int) -> FleetView:  # type: ignore[no-untyped-def]
    return FleetView(generated_at=time.time(), registry="consul", instances=[],
                     broker=BrokerFigures(up=True, queue_length=queue, total_workers=workers, active_workers=busy),
                     edges=[], scaling=decide(queue, workers, busy, config.transcoder.scaling_policy, farms=2))


async def _true(value: bool) -> bool:
    return value


async def test_pool_runs_its_share_of_the_decision(consul_agent: Agent, redis_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = config_from_tree({
        "deployment": {"mode": "fleet", "node_name": "farm-1"},
        "storage": {"data_dir": str(tmp_path), "min_free_space": 0},
        "cache": {"redis_url": redis_url},
        "broker": {"host": "127.0.0.1", "frontend_port": free_port(), "backend_port": free_port(),
                   "publisher_port": free_port(), "heartbeat_interval": "200ms"},
        "registry": {"type": "consul", "consul_address": consul_agent.address, "watch_wait": "10s"},
        "transcoder": {"worker_pool_size": 1, "health_check_interval": "500ms", "drain_timeout": "1s",
                       "scaling_policy": {"min_workers": 1, "max_workers": 3, "target_queue_len": 1,
                                          "scale_up_threshold": 1.0, "scale_down_threshold": 0.5,
                                          "check_interval": "200ms"}},
        "metrics": {"enabled": False},
    })
    broker = Broker(config, SqliteJournal(tmp_path / "journal.sqlite3"))
    await broker.start()
    stop = asyncio.Event()
    broker_task = asyncio.create_task(broker.run(stop))
    pool = fleet_pool_class()(config, client=None)
    async with consul_client(config.registry) as client, Discovery(config) as discovery, \
            aiohttp.ClientSession() as session:
        control = ControlState(config, client, discovery, session)
        following = asyncio.create_task(follow_decisions(pool, discovery))
        pool_task = asyncio.create_task(pool.run(stop))
        try:
            await async_wait_until(lambda: _true(len(pool.live()) == 1 and pool.live()[0].state == "idle"),
                                   timeout=60, what="the first worker idle at the broker")
            # 10 waiting over 2 workers: the fleet wants 3 (max), i.e. 2 per farm over 2 farms.
            await control.publish(_view(config, 10, 2, 2))
            await async_wait_until(lambda: _true(pool.target == 2), timeout=10, what="the decision followed")
            await async_wait_until(lambda: _true(len(pool.live()) == 2), timeout=30, what="2 workers")
            await async_wait_until(lambda: _true(broker.stats().idle_workers == 2), timeout=60,
                                   what="both workers connected and idle")
            # The queue drained and the fleet idles: 2 fleet-wide, 1 per farm; an idle worker retires.
            await control.publish(_view(config, 0, 3, 0))
            await async_wait_until(lambda: _true(pool.target == 1), timeout=10, what="the new decision")
            await async_wait_until(lambda: _true(len(pool.live()) == 1), timeout=30, what="back to 1 worker")
        finally:
            stop.set()
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
            await asyncio.wait_for(pool_task, 60)
            await asyncio.wait_for(broker_task, 10)
            await broker.close()
    assert all(w.process.exitcode is not None for w in pool.workers)
