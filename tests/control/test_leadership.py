"""The Consul leader lock: one holder, hand-over on release, loss when the holder's check fails."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import pytest
from agent_api import Agent

from streamgate.common.consul.client import consul_client
from streamgate.common.consul.leadership import LeaderLock, LeadershipLost


def register_ttl(agent: Agent, sid: str) -> str:
    body = json.dumps({"Name": "candidates", "ID": sid, "Check": {"TTL": "30s", "Status": "passing"}}).encode()
    urllib.request.urlopen(urllib.request.Request(agent.address + "/v1/agent/service/register", data=body,
                                                  method="PUT"), timeout=5).close()
    return f"service:{sid}"


async def test_one_leader_then_a_clean_hand_over(consul_agent: Agent) -> None:
    config = consul_agent.config()
    stop = asyncio.Event()
    async with consul_client(config.registry) as client:
        locks = []
        for name in ("a", "b"):
            check = await asyncio.to_thread(register_ttl, consul_agent, name)
            lock = LeaderLock(client, "test/leader", check_id=check, holder=name, lock_delay_s=10, wait_s=5)
            assert await lock.create_session(stop)
            locks.append(lock)
        a, b = locks
        assert await asyncio.wait_for(a.acquire(stop), 10)
        b_waits = asyncio.create_task(b.acquire(stop))
        a_watch = asyncio.create_task(a.watch_lost(stop))
        await asyncio.sleep(0.3)
        assert not b_waits.done() and not a_watch.done()
        _, entry = await client.kv.get("test/leader")
        assert entry["Value"] == b"a" and entry["Session"] == a.session
        started = time.monotonic()
        a_watch.cancel()
        await a.release()  # a clean release: no lock-delay for the successor
        assert await asyncio.wait_for(b_waits, 5)
        assert time.monotonic() - started < 5  # well under the 10 s lock-delay
        _, entry = await client.kv.get("test/leader")
        assert entry["Value"] == b"b" and entry["Session"] == b.session
        await b.release()


async def test_a_critical_check_ends_the_leadership(consul_agent: Agent) -> None:
    config = consul_agent.config()
    stop = asyncio.Event()
    async with consul_client(config.registry) as client:
        check = await asyncio.to_thread(register_ttl, consul_agent, "leader")
        lock = LeaderLock(client, "test/leader2", check_id=check, holder="leader", lock_delay_s=1, wait_s=5)
        assert await lock.create_session(stop)
        assert await lock.acquire(stop)
        watch = asyncio.create_task(lock.watch_lost(stop))
        await asyncio.sleep(0.2)
        assert not watch.done()
        # The leader's own check fails: Consul invalidates the session and frees the lock.
        await asyncio.to_thread(consul_agent.put, f"/v1/agent/check/fail/{check}")
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(watch, 10)
        _, entry = await client.kv.get("test/leader2")
        assert entry is not None and not entry.get("Session")
        # A newcomer waits out the lock-delay, then takes it.
        check2 = await asyncio.to_thread(register_ttl, consul_agent, "next")
        successor = LeaderLock(client, "test/leader2", check_id=check2, holder="next", lock_delay_s=1, wait_s=5)
        assert await successor.create_session(stop)
        assert await asyncio.wait_for(successor.acquire(stop), 10)
        await successor.release()


async def test_a_restarted_leader_takes_back_the_lock_its_killed_run_held(consul_agent: Agent) -> None:
    """SIGKILL, then systemd restarts the broker within one check TTL: the check never goes
    critical, so the dead run's session still holds the lock. The new run, the same holder,
    ends that session and leads, instead of everyone waiting on a session nobody runs."""
    config = consul_agent.config()
    stop = asyncio.Event()
    async with consul_client(config.registry) as client:
        check = await asyncio.to_thread(register_ttl, consul_agent, "broker-1")
        killed = LeaderLock(client, "test/leader3", check_id=check, holder="broker-1 tcp://10.0.0.1:5570",
                            lock_delay_s=1, wait_s=5)
        assert await killed.create_session(stop)
        assert await killed.acquire(stop)
        stale = killed.session
        # The restarted run: the same service and check, registered again passing, a new session.
        await asyncio.to_thread(register_ttl, consul_agent, "broker-1")
        restarted = LeaderLock(client, "test/leader3", check_id=check, holder="broker-1 tcp://10.0.0.1:5570",
                               lock_delay_s=1, wait_s=5)
        assert await restarted.create_session(stop)
        assert await asyncio.wait_for(restarted.acquire(stop), 15)
        _, entry = await client.kv.get("test/leader3")
        assert entry["Session"] == restarted.session != stale
        # Another candidate's lock is never touched: only our own past is ended.
        other = LeaderLock(client, "test/leader3", check_id=await asyncio.to_thread(register_ttl, consul_agent, "b2"),
                           holder="broker-2 tcp://10.0.0.2:5570", lock_delay_s=1, wait_s=1)
        assert await other.create_session(stop)
        assert not await other.try_acquire()
        assert not other._held_by_our_past(entry)
        await restarted.release()
