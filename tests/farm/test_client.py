"""BrokerClient: a broker that is down gives a prompt, named error; the client recovers."""

from __future__ import annotations

import asyncio
import time

import pytest

from streamgate.common.broker_client import BrokerClient, BrokerUnavailable

pytestmark = pytest.mark.usefixtures("no_leaks")


async def test_broker_down_is_a_prompt_named_error_then_recovers(farm, start_broker) -> None:
    client = BrokerClient(farm.config.broker_endpoints, timeout_s=0.3)
    try:
        t0 = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="did not answer within 0.3s"):
            await client.submit(farm.job("/src.mp4"))
        assert time.monotonic() - t0 < 2.0  # 0.3 s, with room for a busy machine
        # Many concurrent callers while down: each fails within the timeout, none hangs.
        t0 = time.monotonic()
        results = await asyncio.gather(*(client.stats() for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, BrokerUnavailable) for r in results)
        assert time.monotonic() - t0 < 2.0  # 0.3 s, with room for a busy machine
        with pytest.raises(BrokerUnavailable):
            async with client.events() as stream:
                await stream.live(timeout_s=0.3)
        await start_broker()
        job = farm.job("/src.mp4")
        reply = await client.submit(job)  # a fresh socket: nothing stale was queued meanwhile
        assert reply.accepted and reply.reason == ""
        assert (await client.stats()).queue_length == 1
    finally:
        await client.close()
    with pytest.raises(BrokerUnavailable, match="closed"):
        await client.stats()


async def test_concurrent_requests_each_get_their_own_reply(farm, start_broker, client) -> None:
    await start_broker()
    jobs = [farm.job("/src.mp4", priority=i % 3) for i in range(20)]
    replies = await asyncio.gather(*(client.submit(j) for j in jobs))
    assert all(r.accepted for r in replies)
    infos = await asyncio.gather(*(client.job(j.job_id) for j in jobs))
    assert [i.job_id for i in infos] == [j.job_id for j in jobs]
    assert [i.priority for i in infos] == [j.priority for j in jobs]


async def test_event_stream_notices_a_silent_broker(farm, start_broker, client) -> None:
    broker = await start_broker()
    async with client.events(silence_s=0.5) as stream:
        await stream.live()
        await client.submit(farm.job("/src.mp4", job_id="e1"))
        first = await anext(stream)
        assert first.job_id == "e1" and type(first).__name__ == "JobQueued"
        await broker.stop()
        t0 = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="no events"):
            await anext(stream)
        assert time.monotonic() - t0 < 2.0


async def test_retarget_follows_a_new_broker(farm, start_broker, client, tmp_path) -> None:
    """After a failover the client talks to the new leader from its next request on."""
    import msgspec

    from streamgate.common.config import BrokerEndpoints

    await start_broker()
    assert (await client.submit(farm.job("/src.mp4", job_id="old"))).accepted
    run = farm.data_dir / "run"
    other = BrokerEndpoints(frontend=f"ipc://{run}/b2-frontend.sock", backend=f"ipc://{run}/b2-backend.sock",
                            publisher=f"ipc://{run}/b2-events.sock")
    from streamgate.farm.broker import Broker
    from streamgate.farm.journal import SqliteJournal

    second = Broker(farm.config, SqliteJournal(farm.data_dir / "second.sqlite3"), endpoints=other)
    await second.start()
    stop = asyncio.Event()
    task = asyncio.create_task(second.run(stop))
    try:
        await client.retarget(other)
        assert await client.job("old") is None  # the second broker's journal
        assert (await client.submit(farm.job("/src.mp4", job_id="new"))).accepted
        assert (await client.stats()).queue_length == 1
        await client.retarget(msgspec.structs.replace(other))  # same endpoints: nothing changes
        assert (await client.job("new")).state == "queued"
    finally:
        stop.set()
        await task
        await second.close()
