"""A fleet's farm (``streamgate farm``: the fleet pool and its worker processes) follows the broker
leader through Consul: no static ``broker.host`` (it points at nothing here), SIGKILL of the
leader mid-job, the worker reattaches to the new leader and the job completes exactly once; a
farm attached to no broker is not ``passing`` in its TTL check.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_api import Agent, free_port
from support import async_wait_until, terminate
from test_failover import (  # noqa: F401 (brokers is a fixture)
    _eq,
    _leader_is,
    brokers,
    fleet_tree,
    job_states,
    leader_of,
    submit_through_discovery,
)

from streamgate.common.config import config_from_tree
from streamgate.common.consul.client import consul_client
from streamgate.common.consul.discovery import Discovery
from streamgate.common.protocol import JobSpec
from streamgate.farm.failover import journal_prefix
from streamgate.farm.journal_redis import RedisJournal

RUNNERS = Path(__file__).resolve().parent.parent / "farm" / "runners.py"


def start_farm(config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMGATE", "REGISTRY", "CONSUL"))}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "streamgate", "--config", str(config_path), "farm",
                                 "--runner", f"{RUNNERS}:gated"], env=env, stdout=out, stderr=subprocess.STDOUT)


def farm_check(agent: Agent) -> tuple[str, str] | None:
    """The status and output of the farm's TTL check, None until its probe has reported."""
    for check_id, check in agent.checks().items():
        if "streamgate-farm" in check_id and check["Output"]:
            return str(check["Status"]), str(check["Output"])
    return None


async def _check(agent: Agent) -> tuple[str, str] | None:
    return await asyncio.to_thread(farm_check, agent)


async def _status_is(agent: Agent, want: str) -> bool:
    check = await _check(agent)
    return check is not None and check[0] == want


@pytest.mark.timeout(120)
async def test_the_farm_follows_the_leader_and_the_job_completes_once(
        brokers, consul_agent: Agent, redis_url: str, tmp_path: Path, video_factory: Any) -> None:  # noqa: F811
    source = video_factory("follow.mp4", seconds=1.0, width=320, height=240)
    # The farm's own broker address is a port nothing listens on: only discovery can find one.
    tree = fleet_tree(consul_agent, redis_url, tmp_path / "farm", "farm-node",
                      (free_port(), free_port(), free_port()))
    tree["transcoder"].update({"worker_pool_size": 1, "health_check_interval": "500ms", "scaling_policy": {
        "min_workers": 1, "max_workers": 1, "check_interval": "500ms"}})
    config = config_from_tree(tree)
    path = tmp_path / "farm.yaml"
    path.write_text(yaml.safe_dump(tree))
    log = tmp_path / "farm.log"
    farm = start_farm(path, log)
    job_id = "followed"
    media = tmp_path / "media"
    try:
        # No broker anywhere yet: registered, but not passing.
        status, output = await async_wait_until(lambda: _check(consul_agent), timeout=60,
                                                what="the farm registered in Consul")
        assert status == "critical" and "attached to no broker" in output, (status, output)

        first, second = brokers("broker-a"), brokers("broker-b")
        async with consul_client(config.registry) as client, Discovery(config) as discovery:
            leader = await async_wait_until(lambda: leader_of(client, config), timeout=30, what="a broker leader")
            old = next(b for b in (first, second) if f"127.0.0.1:{b.port}" in leader)
            standby = second if old is first else first
            await async_wait_until(lambda: _status_is(consul_agent, "passing"), timeout=30,
                                   what="the farm passing once it hears the leader")

            await submit_through_discovery(discovery, JobSpec(job_id=job_id, source=str(source),
                                                              out_dir=str(media / job_id)))
            await async_wait_until(lambda: _true((media / f"{job_id}.running-1").exists()), timeout=30,
                                   what="the job running on the farm's worker")

            old.proc.kill()  # SIGKILL mid-job: no deregistration, no lock release
            old.proc.wait(10)
            await async_wait_until(lambda: _leader_is(client, config, f"127.0.0.1:{standby.port}"),
                                   timeout=30, what="the standby to take the leader lock")
            await async_wait_until(
                lambda: _eq(asyncio.to_thread(consul_agent.passing, "streamgate-broker"),
                            [f"streamgate-broker-{standby.name}-{standby.port}"]),
                timeout=30, what="discovery to offer the new leader only")
            # The worker reattaches to the new leader while its run is held at the gate.
            await async_wait_until(lambda: _running_on_new_leader(discovery, job_id), timeout=30,
                                   what="the new leader to re-adopt the running job")
            (media / f"{job_id}.release").touch()
            states = await async_wait_until(lambda: _done(discovery, job_id), timeout=60,
                                            what="the job done on the new leader")
            assert states == {job_id: "done"}
            await async_wait_until(lambda: _status_is(consul_agent, "passing"), timeout=30,
                                   what="the farm passing on the new leader")
    finally:
        terminate(farm)

    # Exactly once: one attempt ran (no second marker), one done in the journal.
    assert sorted(p.name for p in media.glob(f"{job_id}.running-*")) == [f"{job_id}.running-1"]
    assert (media / job_id / "master.m3u8").is_file()
    journal = RedisJournal.from_url(redis_url, journal_prefix(config))
    try:
        totals = await journal.totals()
        assert (totals.done, totals.failed) == (1, 0)
        record = await journal.get(job_id)
        assert record is not None and record.state == "done" and record.attempts == 1
    finally:
        await journal.close()
    text = log.read_text()
    assert re.search(r"worker \S+: broker moved", text), text[-3000:]  # retargeted, not timed out


async def _true(value: bool) -> bool:
    return value


async def _running_on_new_leader(discovery: Discovery, job_id: str) -> bool:
    from streamgate.common.broker_client import BrokerClient, BrokerUnavailable

    client = BrokerClient(await discovery.broker_endpoints(), timeout_s=1.0)
    try:
        # Re-adopted: the farm's one worker is connected to this broker and busy with its lease.
        info, stats = await client.job(job_id), await client.stats()
        return (info is not None and info.state == "running" and stats.total_workers == 1
                and stats.active_workers == 1)
    except BrokerUnavailable:
        return False
    finally:
        await client.close()


async def _done(discovery: Discovery, job_id: str) -> dict[str, str] | None:
    states = await job_states(discovery, [job_id])
    return states if states.get(job_id) == "done" else None
