"""The edge in a fleet with Consul: its one broker client follows the leader, origins come from
Consul, and the SO_REUSEPORT copies of an edge leave registration to the first process.

Real parts: the Consul stand-in (tests/control/consul_standin.py), redis-server, two
``streamgate broker`` processes with failover, ``streamgate edge`` processes and in-process
EdgeServers, the real pipeline for the job.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
import pytest
from agent_api import Agent
from conftest import free_port, streamgate_env
from support import async_wait_until, children_of, terminate, title_of, wait_until
from test_failover import brokers, fleet_tree, leader_of  # noqa: F401 - the brokers fixture

from streamgate.common.broker_client import BrokerClient
from streamgate.common.config import BrokerEndpoints, config_from_tree
from streamgate.common.consul.client import consul_client
from streamgate.common.consul.discovery import Discovery
from streamgate.edge import stores
from streamgate.edge.intake.farm_link import FARM_CLIENT
from streamgate.edge.playback.origin import DiscoveredOrigins
from streamgate.edge.playback.routes import DELIVERY, ORIGIN_RESOLVER
from streamgate.edge.server import EdgeServer
from streamgate.farm.failover import discovered_worker, journal_prefix
from streamgate.farm.journal_redis import RedisJournal

TUS = {"Tus-Resumable": "1.0.0"}


async def _true(value: bool) -> bool:
    return value


async def _upload(url: str, data: bytes, filename: str) -> str:
    """A whole tus upload in one PATCH; returns the video id."""
    meta = "filename " + base64.b64encode(filename.encode()).decode()
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/api/v1/uploads", headers={
                **TUS, "Upload-Length": str(len(data)), "Upload-Metadata": meta}) as r:
            assert r.status == 201, await r.text()
            location = urljoin(url + "/", r.headers["Location"])  # relative without public_url
        async with session.patch(location, data=data, headers={
                **TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}) as r:
            assert r.status == 204, await r.text()
    return location.rsplit("/", 1)[1]


@pytest.mark.timeout(120)
async def test_fleet_edge_submits_to_the_new_leader_after_failover(
        brokers, consul_agent: Agent, redis_url: str, tmp_path: Path, video_factory) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    source = video_factory("edge-failover.mp4", seconds=1.0, width=320, height=240)
    first, second = brokers("broker-a"), brokers("broker-b")
    # The edge's static broker ports lead nowhere: only discovery can find a broker.
    tree = fleet_tree(consul_agent, redis_url, tmp_path / "edge", "edge-node", (1, 2, 3))
    tree.update(server={"host": "127.0.0.1", "port": free_port(), "workers": 1}, auth={"required": False, "secret": "one-fleet-secret"})
    config = config_from_tree(tree)
    async with consul_client(config.registry) as client:
        leader = await async_wait_until(lambda: leader_of(client, config), timeout=30, what="a broker leader")
        old = next(b for b in (first, second) if f"127.0.0.1:{b.port}" in leader)
        standby = second if old is first else first
        edge = EdgeServer(config)
        await edge.start()
        try:
            farm = edge.app[FARM_CLIENT]
            await async_wait_until(lambda: _true(farm.endpoints.frontend == f"tcp://127.0.0.1:{old.port}"),
                                   timeout=15, what="the edge's broker client on the leader")

            old.proc.kill()  # SIGKILL: no deregistration, no lock release
            old.proc.wait(10)
            await async_wait_until(lambda: _true(farm.endpoints.frontend == f"tcp://127.0.0.1:{standby.port}"),
                                   timeout=30, what="the edge's broker client to follow the new leader")

            video_id = await _upload(f"http://127.0.0.1:{config.server.port}", source.read_bytes(), "clip.mp4")
            catalog = edge.app[stores.CATALOG]

            async def submitted() -> bool:
                video = await catalog.get(video_id)
                return video is not None and video.submitted_at is not None

            await async_wait_until(submitted, timeout=20, what="the job accepted by a broker")
            # The new leader has it, and journaled it (Redis, under its fencing epoch).
            direct = BrokerClient(BrokerEndpoints(frontend=f"tcp://127.0.0.1:{standby.port}", backend="",
                                                  publisher=""), timeout_s=2.0)
            try:
                info = await direct.job(video_id)
            finally:
                await direct.close()
            assert info is not None and info.state in ("queued", "running"), info
            journal = RedisJournal.from_url(redis_url, journal_prefix(config))
            try:
                assert (await journal.get(video_id)) is not None
            finally:
                await journal.close()

            # A worker of the new leader runs it; the edge's events follower (the same followed
            # client) hears the new leader's DONE and marks the video ready.
            async with Discovery(config) as discovery:
                worker = discovered_worker(config, discovery, worker_id="farm-node/w0")
                task = asyncio.create_task(worker.run())
                try:
                    async def ready() -> bool:
                        video = await catalog.get(video_id)
                        assert video is None or video.status != "failed", video
                        return video is not None and video.status == "ready"

                    await async_wait_until(ready, timeout=60, what="the video ready through the new leader")
                finally:
                    worker.drain()
                    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)
            assert (config.storage.media_dir / video_id / "master.m3u8").is_file()
        finally:
            await edge.close()


def _media_tree(root: Path, video_id: str) -> dict[str, bytes]:
    """A small published video (the edge checks names, not contents)."""
    files = {"master.m3u8": b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\n240p/index.m3u8\n",
             "240p/index.m3u8": b"#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:1,\n0.m4s\n#EXT-X-ENDLIST\n",
             "240p/init.mp4": bytes(range(256)) * 8,
             "240p/0.m4s": bytes(range(251)) * 400}
    for rel, body in files.items():
        path = root / "media" / video_id / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    return files


class EdgeProc:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture
def consul_edge(tmp_path: Path) -> Iterator[Callable[..., EdgeProc]]:
    """Factory: ``streamgate edge --workers N`` registering in the given Consul agent."""
    started: list[EdgeProc] = []

    def start(agent: Agent, data_dir: Path, node: str, workers: int = 1, **env: str) -> EdgeProc:
        port = free_port()
        log = tmp_path / f"edge-{node}.log"
        full_env = streamgate_env(data_dir, port, REGISTRY_TYPE="consul", CONSUL_ADDRESS=agent.address,
                                  STREAMGATE__REGISTRY__ADVERTISE_ADDRESS="127.0.0.1",
                                  STREAMGATE__REGISTRY__CHECK_INTERVAL="1s",
                                  STREAMGATE__DEPLOYMENT__NODE_NAME=node, **env)
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "streamgate", "edge", "--workers", str(workers)],
                                    env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        edge = EdgeProc(proc, port, log)
        started.append(edge)
        return edge

    yield start
    for edge in started:
        terminate(edge.proc)


async def test_edge_pulls_a_missing_file_from_an_origin_discovered_in_consul(
        consul_agent: Agent, consul_edge, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = _media_tree(tmp_path / "origin", "vid-9")
    origin = consul_edge(consul_agent, tmp_path / "origin", "origin-node",
                         STREAMGATE__REGISTRY__TAGS="[origin]")
    origin_id = f"streamgate-edge-origin-node-{origin.port}"
    await async_wait_until(
        lambda: _eq_async(asyncio.to_thread(consul_agent.passing, "streamgate-edge"), [origin_id]),
        timeout=30, what="the origin edge passing in Consul")

    # This edge has no media and no static origin: only Consul can tell it where to pull from.
    config = config_from_tree({
        "deployment": {"node_name": "puller-node"},
        "storage": {"data_dir": str(tmp_path / "puller")},
        "server": {"host": "127.0.0.1", "port": free_port(), "workers": 1},
        "auth": {"required": False},
        "registry": {"type": "consul", "consul_address": consul_agent.address, "watch_wait": "5s"},
    })
    assert not config.edge.origin_url and not config.registry.static_origins
    edge = EdgeServer(config)
    await edge.start()
    try:
        resolver = edge.app[ORIGIN_RESOLVER]
        assert isinstance(resolver, DiscoveredOrigins)
        assert await resolver.origins() == [origin.url]
        async with aiohttp.ClientSession() as session:
            for rel in ("240p/init.mp4", "240p/0.m4s", "240p/index.m3u8"):
                async with session.get(f"http://127.0.0.1:{config.server.port}/videos/vid-9/{rel}") as r:
                    assert r.status == 200, await r.text()
                    assert await r.read() == files[rel]
            async with session.get(f"http://127.0.0.1:{config.server.port}/videos/vid-9/240p/7.m4s") as r:
                assert r.status == 404  # the origin said so
        assert not (config.storage.media_dir / "vid-9").exists()  # pulled into the cache only
        assert edge.app[DELIVERY].puller.upstream_fetches >= 3
    finally:
        await edge.close()
    assert origin.proc.poll() is None


async def _eq_async(coro: Any, value: Any) -> bool:
    return (await coro) == value


def test_a_two_process_edge_registers_one_instance(standin, consul_edge, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    agent = Agent(standin.address, standin)
    _media_tree(tmp_path / "data", "vid-1")
    edge = consul_edge(agent, tmp_path / "data", "edge-node", workers=2)
    service_id = f"streamgate-edge-edge-node-{edge.port}"
    wait_until(lambda: agent.passing("streamgate-edge") == [service_id], timeout=30,
               what="the edge passing in Consul")

    def copies() -> list[int]:
        return [p for p in children_of(edge.proc.pid) if title_of(p).startswith("streamgate edge")]

    copy = wait_until(lambda: copies() or None, timeout=30, what="the edge's copy process")[0]
    # The copy serves the same port (it says ready right after it listens; a copy with
    # registration on would register the shared id then).
    wait_until(lambda: _listens(copy, edge.port), timeout=30, what="the copy listening")
    wait_until(lambda: edge.log.read_text().count("1 process(es)") >= 1 or None, timeout=30,
               what="the copy ready")

    # A copy that stops must not take the shared registration with it.
    os.kill(copy, signal.SIGTERM)
    wait_until(lambda: copy not in children_of(edge.proc.pid), timeout=20, what="the copy gone")
    deregistrations = [path for method, path in standin.requests if "/service/deregister/" in path]
    assert deregistrations == []
    assert list(agent.services()) == [service_id]
    assert agent.passing("streamgate-edge") == [service_id]
    registrations = [path for method, path in standin.requests if path == "/v1/agent/service/register"]
    assert len(registrations) == 1, registrations
    # The pool restarts the copy; the edge stays one instance.
    wait_until(lambda: [p for p in copies() if p != copy] or None, timeout=30, what="the copy restarted")
    assert edge.proc.poll() is None


def _listens(pid: int, port: int) -> bool:
    """Whether ``pid`` holds a listening TCP socket on ``port`` (/proc/net/tcp, state 0A)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(fields[9])
    try:
        fds = [_readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return False
    return any(link == f"socket:[{inode}]" for link in fds for inode in inodes)


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""  # an fd closed meanwhile
