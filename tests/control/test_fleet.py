"""The fleet view's parts: instance health, the scaling decision in Consul KV, a view without a registry."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import msgspec
from agent_api import Agent

from streamgate.common.config import config_from_tree
from streamgate.common.consul.client import consul_client
from streamgate.common.consul.discovery import Discovery, scaling_keys
from streamgate.control.fleet import BrokerFigures, CheckState, FleetView, gather_fleet, instance_status
from streamgate.control.scaling import decide
from streamgate.control.service import ControlState


def test_instance_status_is_the_worst_check_and_maintenance_wins() -> None:
    assert instance_status([CheckState("service:a", "passing")]) == "passing"
    assert instance_status([CheckState("service:a", "passing"), CheckState("x", "warning")]) == "warning"
    assert instance_status([CheckState("x", "warning"), CheckState("y", "critical")]) == "critical"
    assert instance_status([CheckState("service:a", "passing"),
                            CheckState("_service_maintenance:a", "critical")]) == "maintenance"
    assert instance_status([]) == "unknown"


def _view(config, queue: int, broker_up: bool = True) -> FleetView:  # type: ignore[no-untyped-def]
    return FleetView(generated_at=time.time(), registry="consul", instances=[],
                     broker=BrokerFigures(up=broker_up, queue_length=queue, total_workers=4, active_workers=4),
                     edges=[], scaling=decide(queue, 4, 4, config.transcoder.scaling_policy, farms=2))


async def test_decision_is_published_to_consul_kv_when_it_changes(consul_agent: Agent) -> None:
    config = consul_agent.config()
    count_key, decision_key = scaling_keys(config)
    assert count_key == "streamgate/scaling/farm_workers"
    async with consul_client(config.registry) as client, Discovery(config) as discovery, \
            aiohttp.ClientSession() as session:
        state = ControlState(config, client, discovery, session)
        # A broker that did not answer gives no decision worth publishing.
        await state.publish(_view(config, 100, broker_up=False))
        assert (await client.kv.get(count_key))[1] is None
        await state.publish(_view(config, 100))
        _, entry = await client.kv.get(count_key)
        assert entry["Value"] == b"10"
        _, entry = await client.kv.get(decision_key)
        decision = msgspec.json.decode(entry["Value"])
        assert decision["farm_workers"] == 10 and decision["per_farm"] == 5 and decision["action"] == "scale_up"
        index_before = (await client.kv.get(count_key))[1]["ModifyIndex"]
        await state.publish(_view(config, 100))  # unchanged: not written again
        assert (await client.kv.get(count_key))[1]["ModifyIndex"] == index_before
        await state.publish(_view(config, 10))
        assert (await client.kv.get(count_key))[1]["Value"] == b"4"


async def test_an_autoscaler_can_follow_the_key_with_a_blocking_query(consul_agent: Agent) -> None:
    """What docs/control-plane.md tells operators: GET the key with ?index= and wait for changes."""
    config = consul_agent.config()
    count_key, _ = scaling_keys(config)
    async with consul_client(config.registry) as client, Discovery(config) as discovery, \
            aiohttp.ClientSession() as session:
        state = ControlState(config, client, discovery, session)
        await state.publish(_view(config, 10))
        index, entry = await client.kv.get(count_key)
        follower = asyncio.create_task(client.kv.get(count_key, index=index, wait="20s"))
        await asyncio.sleep(0)
        started = time.monotonic()
        await state.publish(_view(config, 100))
        _, entry = await asyncio.wait_for(follower, 10)
        assert entry["Value"] == b"10" and time.monotonic() - started < 5
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{consul_agent.address}/v1/kv/{count_key}?raw") as r:
            # `curl $CONSUL/v1/kv/streamgate/scaling/farm_workers?raw` gives the bare figure.
            assert await r.read() == b"10"


async def test_view_without_a_registry_lists_this_node(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = config_from_tree({"storage": {"data_dir": str(tmp_path)}, "server": {"port": 1},
                               "registry": {"static_origins": ["http://origin:8080"]}})
    async with Discovery(config) as discovery, aiohttp.ClientSession() as session:
        view = await gather_fleet(config, None, discovery, session)
    assert view.registry == "none"
    assert {i.role for i in view.instances} == {"edge", "broker", "farm", "control", "origin"}
    assert all(i.status == "unknown" for i in view.instances)
    # Nothing listens on port 1 here: the edge is reported down, the view is still built.
    assert [e.up for e in view.edges] == [False] and view.edges[0].error
    assert not view.broker.up and view.broker.error


async def test_a_farm_follows_the_decision(consul_agent: Agent) -> None:
    """Discovery.follow_scaling: the seam a farm pool uses to converge on its share."""
    config = consul_agent.config(watch_wait="20s")
    async with consul_client(config.registry) as client, Discovery(config) as discovery, \
            aiohttp.ClientSession() as session:
        state = ControlState(config, client, discovery, session)
        following = discovery.follow_scaling()
        first = asyncio.create_task(anext(following))
        await asyncio.sleep(0)
        assert not first.done()  # nothing published yet: nothing to follow
        await state.publish(_view(config, 100))
        assert (await asyncio.wait_for(first, 10)).per_farm == 5
        await state.publish(_view(config, 10))
        decision = await asyncio.wait_for(anext(following), 10)
        assert (decision.farm_workers, decision.per_farm) == (4, 2)
        await following.aclose()
