"""Broker failover: two ``streamgate broker`` processes, one leader by Consul lock, jobs in Redis.

Kill the leader with SIGKILL while jobs run and wait: leadership moves to the standby, the workers
find it through discovery, and every job completes exactly once (one run each, one ``done`` each).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from agent_api import Agent, free_port
from support import async_wait_until, shm_segments, terminate

from streamgate.common.broker_client import BrokerClient, BrokerUnavailable
from streamgate.common.config import Config, config_from_tree
from streamgate.common.consul.client import consul_client
from streamgate.common.consul.discovery import Discovery
from streamgate.common.media import TranscodeResult
from streamgate.common.protocol import JobSpec
from streamgate.control.fleet import gather_fleet
from streamgate.farm.failover import discovered_worker, journal_prefix, lock_key
from streamgate.farm.journal_redis import RedisJournal
from streamgate.farm.worker import JobCancelled, JobRun, run_pipeline

JOBS = 4


def fleet_tree(agent: Agent, redis_url: str, data_dir: Path, node: str, ports: tuple[int, int, int]) -> dict[str, Any]:
    return {
        "deployment": {"mode": "fleet", "node_name": node},
        "storage": {"data_dir": str(data_dir), "min_free_space": 0},
        "cache": {"redis_url": redis_url},
        "broker": {"host": "127.0.0.1", "frontend_port": ports[0], "backend_port": ports[1],
                   "publisher_port": ports[2], "heartbeat_interval": "250ms", "heartbeat_liveness": 5,
                   "stall_timeout": "30s", "max_retries": 2},
        "registry": {"type": "consul", "consul_address": agent.address, "ttl": "2s", "watch_wait": "5s",
                     "advertise_address": "127.0.0.1", "kv_prefix": f"sgtest{os.getpid()}"},
        "control": {"broker_lock_delay": "1s"},
        "transcoder": {"task_timeout": "60s", "ladder": [240], "preset": "ultrafast", "segment_duration": "1s",
                       "drain_timeout": "5s"},
        "metrics": {"enabled": False},
    }


class Broker:
    def __init__(self, name: str, config_path: Path, log: Path, proc: subprocess.Popen[bytes], port: int) -> None:
        self.name, self.config_path, self.log, self.proc, self.port = name, config_path, log, proc, port


@pytest.fixture
def brokers(consul_agent: Agent, redis_url: str, tmp_path: Path) -> Iterator[Callable[[str], Broker]]:
    started: list[Broker] = []

    def start(name: str) -> Broker:
        ports = (free_port(), free_port(), free_port())
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(fleet_tree(consul_agent, redis_url, tmp_path / name, name, ports)))
        log = tmp_path / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMGATE", "REGISTRY", "CONSUL"))}
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "streamgate", "--config", str(path), "broker"],
                                    env=env, stdout=out, stderr=subprocess.STDOUT)
        broker = Broker(name, path, log, proc, ports[0])
        started.append(broker)
        return broker

    yield start
    for broker in started:
        terminate(broker.proc)


class GatedRuns:
    """The real pipeline, held at a per-job gate until the test opens it; counts runs per job."""

    def __init__(self) -> None:
        self.gates: dict[str, threading.Event] = {}
        self.started: Counter[str] = Counter()
        self.completed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def gate(self, job_id: str) -> threading.Event:
        with self._lock:
            return self.gates.setdefault(job_id, threading.Event())

    def running(self) -> list[str]:
        with self._lock:
            return [j for j, n in self.started.items() if n > self.completed[j]]

    def __call__(self, run: JobRun) -> TranscodeResult:
        with self._lock:
            self.started[run.job.job_id] += 1
        gate = self.gate(run.job.job_id)
        while not gate.wait(0.02):
            if run.cancel.is_set():
                raise JobCancelled("cancelled at the gate")
        result = run_pipeline(run)
        with self._lock:
            self.completed[run.job.job_id] += 1
        return result


async def leader_of(client: Any, config: Config) -> str:
    _, entry = await client.kv.get(lock_key(config))
    if entry is None or not entry.get("Session") or entry.get("Value") is None:
        return ""
    return entry["Value"].decode()


async def submit_through_discovery(discovery: Discovery, job: JobSpec) -> None:
    """An edge's submit: find the leader, retry on a broker that does not answer (idempotent by id)."""
    for _ in range(40):
        client = BrokerClient(await discovery.broker_endpoints(), timeout_s=1.0)
        try:
            reply = await client.submit(job)
            assert reply.accepted, reply
            return
        except BrokerUnavailable:
            await asyncio.sleep(0.25)
        finally:
            await client.close()
    raise AssertionError(f"could not submit {job.job_id}")


async def job_states(discovery: Discovery, ids: list[str]) -> dict[str, str]:
    client = BrokerClient(await discovery.broker_endpoints(), timeout_s=1.0)
    try:
        return {job_id: (info.state if (info := await client.job(job_id)) else "") for job_id in ids}
    except BrokerUnavailable:
        return {}
    finally:
        await client.close()


@pytest.mark.timeout(120)
async def test_killing_the_leader_moves_leadership_and_every_job_completes_once(
        brokers, consul_agent: Agent, redis_url: str, tmp_path: Path, video_factory) -> None:  # type: ignore[no-untyped-def]
    shm_before = shm_segments()
    source = video_factory("failover.mp4", seconds=1.0, width=320, height=240)
    first, second = brokers("broker-a"), brokers("broker-b")
    # Workers and edges live on a third node with the same fleet settings.
    config = config_from_tree(fleet_tree(consul_agent, redis_url, tmp_path / "farm", "farm-node", (1, 2, 3)))
    runs = GatedRuns()
    async with consul_client(config.registry) as client, Discovery(config) as discovery:
        leader = await async_wait_until(lambda: leader_of(client, config), timeout=30, what="a broker leader")
        by_port = {b.port: b for b in (first, second)}
        old = next(b for port, b in by_port.items() if f"127.0.0.1:{port}" in leader)
        standby = second if old is first else first
        # Only the leader is discoverable (passing); the standby reports "warning".
        await async_wait_until(
            lambda: _eq(asyncio.to_thread(consul_agent.passing, "streamgate-broker"),
                        [f"streamgate-broker-{old.name}-{old.port}"]),
            timeout=10, what="the leader passing in Consul")
        await async_wait_until(
            lambda: _eq(asyncio.to_thread(consul_agent.check_status,
                                          f"service:streamgate-broker-{standby.name}-{standby.port}"), "warning"),
            timeout=10, what="the standby registered as warning")

        workers = [discovered_worker(config, discovery, runner=runs, worker_id=f"farm-node/w{i}")
                   for i in range(2)]
        worker_tasks = [asyncio.create_task(w.run()) for w in workers]
        try:
            ids = [f"job{i}" for i in range(JOBS)]
            for job_id in ids:
                await submit_through_discovery(discovery, JobSpec(
                    job_id=job_id, source=str(source), out_dir=str(tmp_path / "media" / job_id)))
            # Two jobs are provably running (held at the gate), two wait in the queue.
            await async_wait_until(lambda: _true(len(runs.running()) == 2), timeout=20,
                                   what="two jobs running")
            running = runs.running()

            old.proc.kill()  # SIGKILL: no deregistration, no lock release
            old.proc.wait(10)
            new_leader = await async_wait_until(
                lambda: _leader_is(client, config, f"127.0.0.1:{standby.port}"), timeout=30,
                what="the standby to take the leader lock")
            assert f"streamgate-broker-{standby.name}" in new_leader
            await async_wait_until(
                lambda: _eq(asyncio.to_thread(consul_agent.passing, "streamgate-broker"),
                            [f"streamgate-broker-{standby.name}-{standby.port}"]),
                timeout=20, what="discovery to offer the new leader only")
            endpoints = await discovery.broker_endpoints()
            assert endpoints.frontend == f"tcp://127.0.0.1:{standby.port}"

            # One run finishes while its worker is still away from the new leader (its DONE waits
            # for the reconnect); the other is still running when its worker reconnects and is
            # re-adopted mid-run. Queued jobs then run on the new leader.
            first_run, second_run = running
            runs.gate(first_run).set()
            await async_wait_until(lambda: _workers_connected(discovery, 2), timeout=30,
                                   what="both workers reconnected to the new leader")
            for job_id in ids:
                runs.gate(job_id).set()
            states = await async_wait_until(
                lambda: _all_done(discovery, ids), timeout=60, what="every job done on the new leader")
            assert set(states.values()) == {"done"}
            # The fleet view names the new leader and reads its figures.
            async with aiohttp.ClientSession() as session:
                view = await gather_fleet(config, client, discovery, session)
            assert f"streamgate-broker-{standby.name}" in view.broker.leader
            assert view.broker.up and view.broker.total_tasks_processed == JOBS, view.broker
            roles = Counter((i.role, i.status) for i in view.instances)
            assert roles[("broker", "passing")] == 1, view.instances
        finally:
            for job_id in ids:
                runs.gate(job_id).set()
            for worker in workers:
                worker.drain()
            await asyncio.wait_for(asyncio.gather(*worker_tasks, return_exceptions=True), 30)

    # Exactly once: each job ran to completion once, and the journal counted one done per job.
    assert runs.completed == Counter({job_id: 1 for job_id in ids}), (runs.started, runs.completed)
    journal = RedisJournal.from_url(redis_url, journal_prefix(config))
    try:
        totals = await journal.totals()
        assert (totals.done, totals.failed) == (JOBS, 0)
        for job_id in ids:
            record = await journal.get(job_id)
            assert record is not None and record.state == "done" and record.result is not None
        assert await journal.load_active() == []
    finally:
        await journal.close()
    for job_id in ids:
        assert (tmp_path / "media" / job_id / "master.m3u8").is_file()
    assert "took the leader lock" in standby.log.read_text()
    # The pipelines ran in this process: none of its shared-memory rings may be left (other
    # processes on the machine may hold their own meanwhile).
    assert {n for n in shm_segments() - shm_before if f"-{os.getpid()}-" in n} == set()


async def _true(value: bool) -> bool:
    return value


async def _eq(coro: Any, value: Any) -> bool:
    return (await coro) == value


async def _leader_is(client: Any, config: Config, needle: str) -> str:
    leader = await leader_of(client, config)
    return leader if needle in leader else ""


async def _workers_connected(discovery: Discovery, count: int) -> bool:
    client = BrokerClient(await discovery.broker_endpoints(), timeout_s=1.0)
    try:
        return (await client.stats()).total_workers == count
    except BrokerUnavailable:
        return False
    finally:
        await client.close()


async def _all_done(discovery: Discovery, ids: list[str]) -> dict[str, str] | None:
    states = await job_states(discovery, ids)
    return states if states and all(s == "done" for s in states.values()) else None
