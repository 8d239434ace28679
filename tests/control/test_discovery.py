"""Discovery: passing instances from Consul, fresh through blocking queries, static config as fallback."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

from agent_api import Agent, free_port

from streamgate.common.config import config_from_tree
from streamgate.common.consul.discovery import Discovery


def register(agent: Agent, name: str, sid: str, port: int, *, status: str = "passing",
             tags: list[str] | None = None, meta: dict[str, str] | None = None) -> None:
    body = json.dumps({"Name": name, "ID": sid, "Address": "10.0.0.7", "Port": port, "Tags": tags or [],
                       "Meta": meta or {}, "Check": {"TTL": "60s", "Status": status}}).encode()
    urllib.request.urlopen(urllib.request.Request(agent.address + "/v1/agent/service/register", data=body,
                                                  method="PUT"), timeout=5).close()


def fleet_config(agent: Agent, **extra):  # type: ignore[no-untyped-def]
    return config_from_tree({
        "deployment": {"mode": "fleet", "node_name": "edge-node"},
        "cache": {"redis_url": "redis://127.0.0.1:1"},
        "broker": {"host": "static-broker"},
        "registry": {"type": "consul", "consul_address": agent.address, "watch_wait": "5s", **extra},
    })


async def test_broker_endpoints_come_from_the_passing_broker(consul_agent: Agent) -> None:
    config = fleet_config(consul_agent)
    async with Discovery(config) as discovery:
        # Nothing registered yet: the static config answers.
        following = discovery.follow_broker()
        assert (await anext(following)).frontend == "tcp://static-broker:5570"
        assert (await discovery.broker_endpoints()).frontend == "tcp://static-broker:5570"
        await asyncio.to_thread(register, consul_agent, "streamgate-broker", "b1", 6000,
                                meta={"frontend_port": "6000", "backend_port": "6001", "publisher_port": "6002"})
        endpoints = await asyncio.wait_for(anext(following), 10)
        assert endpoints == await discovery.broker_endpoints()
        await following.aclose()
        assert (endpoints.frontend, endpoints.backend, endpoints.publisher) == (
            "tcp://10.0.0.7:6000", "tcp://10.0.0.7:6001", "tcp://10.0.0.7:6002")


async def test_a_warning_or_critical_instance_is_not_offered(consul_agent: Agent) -> None:
    config = fleet_config(consul_agent)
    await asyncio.to_thread(register, consul_agent, "streamgate-broker", "standby", 7000, status="warning")
    await asyncio.to_thread(register, consul_agent, "streamgate-broker", "dead", 7100, status="critical")
    async with Discovery(config) as discovery:
        assert await discovery.instances("broker") == []
        assert (await discovery.broker_endpoints()).frontend == "tcp://static-broker:5570"
        version = (await discovery.watch("broker")).version  # type: ignore[union-attr]
        # The standby becomes leader (its check passes): discovery follows within one blocking query.
        await asyncio.to_thread(consul_agent.put, "/v1/agent/check/pass/service:standby")
        await asyncio.wait_for(discovery.wait_changed("broker", since=version), 10)
        assert [i.service_id for i in await discovery.instances("broker")] == ["standby"]


async def test_blocking_query_wakes_on_change_not_on_timeout(consul_agent: Agent) -> None:
    config = fleet_config(consul_agent, watch_wait="30s")
    async with Discovery(config) as discovery:
        assert await discovery.origins() == []
        watch = await discovery.watch("edge", "origin")
        assert watch is not None and watch.index is not None
        version = watch.version
        started = time.monotonic()
        await asyncio.to_thread(register, consul_agent, "streamgate-edge", "origin-1", 8080,
                                tags=["edge", "origin"], meta={"node": "origin-node"})
        await asyncio.wait_for(discovery.wait_changed("edge", "origin", since=version), 10)
        # Woken by the change well before the 30 s wait ran out.
        assert time.monotonic() - started < 5
        assert await discovery.origins() == ["http://10.0.0.7:8080"]
        # An edge without the origin tag, and this node itself, are not origins.
        version = watch.version
        await asyncio.to_thread(register, consul_agent, "streamgate-edge", "plain-edge", 8081, tags=["edge"])
        await asyncio.to_thread(register, consul_agent, "streamgate-edge", "self", 8082,
                                tags=["edge", "origin"], meta={"node": "edge-node"})
        await asyncio.wait_for(discovery.wait_changed("edge", "origin", since=version), 10)
        assert await discovery.origins() == ["http://10.0.0.7:8080"]


async def test_unreachable_consul_falls_back_to_static_config() -> None:
    config = config_from_tree({
        "deployment": {"mode": "fleet"}, "cache": {"redis_url": "redis://127.0.0.1:1"},
        "broker": {"host": "10.1.1.1", "frontend_port": 5000},
        "edge": {"origin_url": "http://origin-a:8080"},
        "registry": {"type": "consul", "consul_address": f"http://127.0.0.1:{free_port()}",
                     "static_origins": ["http://origin-b:8080", "http://origin-a:8080"]},
    })
    async with Discovery(config) as discovery:
        assert (await discovery.broker_endpoints()).frontend == "tcp://10.1.1.1:5000"
        assert await discovery.origins() == ["http://origin-a:8080", "http://origin-b:8080"]
        watch = await discovery.watch("broker")
        assert watch is not None and watch.failures >= 1


async def test_single_node_needs_no_registry(standin) -> None:  # type: ignore[no-untyped-def]
    config = config_from_tree({"registry": {"type": "none", "consul_address": standin.address,
                                            "static_origins": ["http://o:1"]}})
    async with Discovery(config) as discovery:
        assert (await discovery.broker_endpoints()).frontend.startswith("ipc://")
        assert await discovery.origins() == ["http://o:1"]
        assert await discovery.watch("broker") is None
    assert standin.requests == []  # Consul was never asked
