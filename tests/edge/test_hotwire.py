"""The hot tier's pipelined MGET connection (edge/playback/hotwire.py), against a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest


async def until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def tier(redis_url: str):
    import redis.asyncio as redis

    from streamgate.edge.playback.hotcache import HotRecord, RedisTier
    from streamgate.edge.playback.hotwire import MgetPipe, connection_params

    client = redis.Redis.from_url(redis_url)
    params = connection_params(client)
    assert params is not None and params["path"] == redis_url.removeprefix("unix://")
    tier = RedisTier(client, max_object_size=1024, max_ttl_s=60, pipe=MgetPipe(params))
    records = {f"v/{i}.m3u8": HotRecord(f"#EXTM3U {i}".encode(), f'"{i}"', "x", "y", "z") for i in range(3)}
    for key, record in records.items():
        assert await tier.put(key, record, 30)
    try:
        yield tier, records
    finally:
        await tier.close()
        await client.aclose()


async def test_lookups_go_out_on_the_pipe_once_it_is_up(tier) -> None:
    tier, records = tier
    # The first lookup goes by the client and starts the pipe's connection.
    assert await tier.get("v/0.m3u8") == records["v/0.m3u8"]
    await until(lambda: tier.pipe.ready, "the pipe to connect")
    before = tier.round_trips
    keys = [f"v/{i % 4}.m3u8" for i in range(30)]  # v/3 is absent
    answers = await asyncio.gather(*(tier.get(key) for key in keys))
    assert tier.round_trips - before == 1
    assert answers == [records.get(key) for key in keys]


async def test_callbacks_run_outside_any_task_and_mgets_pipeline(tier) -> None:
    tier, records = tier
    await tier.get("v/0.m3u8")
    await until(lambda: tier.pipe.ready, "the pipe to connect")
    seen: list[tuple[str, object, bool]] = []

    def waiter(key: str) -> Callable[[object], None]:
        # The fast path starts coroutines inline from these callbacks: no task may be running.
        return lambda record: seen.append((key, record, asyncio.current_task() is None))

    loop = asyncio.get_running_loop()
    tier.get_soon("v/1.m3u8", waiter("v/1.m3u8"))
    # A second turn's MGET goes out before the first one's reply has come back.
    loop.call_soon(lambda: tier.get_soon("v/2.m3u8", waiter("v/2.m3u8")))
    loop.call_soon(lambda: loop.call_soon(lambda: tier.get_soon("v/9.m3u8", waiter("v/9.m3u8"))))
    await until(lambda: len(seen) == 3, "three callbacks")
    assert sorted(seen, key=lambda s: s[0]) == [("v/1.m3u8", records["v/1.m3u8"], True),
                                                ("v/2.m3u8", records["v/2.m3u8"], True),
                                                ("v/9.m3u8", None, True)]


async def test_a_lost_pipe_is_a_miss_then_the_client_then_a_new_pipe(tier) -> None:
    tier, records = tier
    await tier.get("v/0.m3u8")
    await until(lambda: tier.pipe.ready, "the pipe to connect")
    first_wire = tier.pipe.wire
    got: list[object] = []
    tier.get_soon("v/1.m3u8", got.append)
    # The MGET is written when the turn ends; cut the connection right after, before Redis answers.
    asyncio.get_running_loop().call_soon(lambda: first_wire.transport.abort())
    await until(lambda: got, "the lost MGET's answer")
    assert got == [None]  # a miss: the caller goes to the tiers past Redis
    assert not tier.pipe.ready
    # Until the pipe is back the client answers, and a new connection is made after the interval.
    assert await tier.get("v/2.m3u8") == records["v/2.m3u8"]
    await until(lambda: (tier.get_soon("v/0.m3u8", lambda r: None) or tier.pipe.ready), "the pipe to reconnect")
    assert tier.pipe.wire is not first_wire
    assert await tier.get("v/1.m3u8") == records["v/1.m3u8"]


async def test_refused_setup_leaves_the_client_as_the_path(redis_url: str) -> None:
    import redis.asyncio as redis

    from streamgate.edge.playback.hotcache import HotRecord, RedisTier
    from streamgate.edge.playback.hotwire import MgetPipe, connection_params

    client = redis.Redis.from_url(redis_url)
    params = connection_params(client)
    assert params is not None
    pipe = MgetPipe({**params, "password": "wrong"})  # this Redis has no password: AUTH is refused
    tier = RedisTier(client, max_object_size=1024, max_ttl_s=60, pipe=pipe)
    try:
        record = HotRecord(b"#EXTM3U", '"e"', "x", "y", "z")
        assert await tier.put("v/a.m3u8", record, 30)
        assert await tier.get("v/a.m3u8") == record
        await until(lambda: pipe._connecting is None, "the refused setup to finish")
        assert not pipe.ready and pipe.wire is None
        assert await tier.get("v/a.m3u8") == record
    finally:
        await tier.close()
        await client.aclose()


async def test_a_changed_value_is_decoded_again_and_the_same_bytes_reuse_the_record(tier) -> None:
    """Repeat lookups of unchanged bytes share one decoded record; new bytes in Redis are never
    answered with the old record (the reuse is keyed by the bytes, not only the key)."""
    from streamgate.edge.playback.hotcache import HotRecord

    tier, records = tier
    await tier.get("v/0.m3u8")
    await until(lambda: tier.pipe.ready, "the pipe to connect")
    first = await tier.get("v/1.m3u8")
    again = await tier.get("v/1.m3u8")
    assert first == records["v/1.m3u8"] and again is first
    grown = HotRecord(b"#EXTM3U 1 grown", '"1b"', "x", "y", "z")
    assert await tier.put("v/1.m3u8", grown, 30)
    assert await tier.get("v/1.m3u8") == grown
