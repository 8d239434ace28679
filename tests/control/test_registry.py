"""Registration of a role in Consul: checks, TTL refreshes from the role's loop, retries, drain."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator

import pytest
from agent_api import Agent, free_port
from aiohttp import web
from support import async_wait_until, wait_until

from streamgate.common.consul.client import consul_client
from streamgate.common.consul.registry import Registrar, registration_for, set_maintenance


class LoopThread:
    """A role's event loop in its own thread, so a test can wedge it like a stuck role would."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 10):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def role_loop() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


async def test_ttl_role_registers_stays_passing_and_deregisters(consul_agent: Agent) -> None:
    config = consul_agent.config(ttl="1s")
    reg = registration_for("broker", config)
    assert reg.name == "streamgate-broker" and reg.check == "ttl"
    assert reg.meta["version"] and reg.meta["node"] == config.node_name and reg.meta["role"] == "broker"
    stop = asyncio.Event()
    registrar = Registrar(config, reg)
    task = asyncio.create_task(registrar.run(stop))
    await asyncio.wait_for(registrar.registered.wait(), 10)
    service = (await asyncio.to_thread(consul_agent.services))[reg.service_id]
    assert service["Service"] == "streamgate-broker"
    assert service["Port"] == config.broker.frontend_port
    assert "broker" in service["Tags"] and service["Meta"]["version"] == reg.meta["version"]
    assert await asyncio.to_thread(consul_agent.check_status, reg.check_id) == "passing"
    # Three TTLs later the check is still passing: the refreshes arrive from this loop.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        assert await asyncio.to_thread(consul_agent.check_status, reg.check_id) == "passing"
        await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert reg.service_id not in await asyncio.to_thread(consul_agent.services)
    assert await asyncio.to_thread(consul_agent.check_status, reg.check_id) is None


def test_wedged_loop_turns_the_ttl_check_critical(consul_agent: Agent, role_loop: LoopThread) -> None:
    config = consul_agent.config(ttl="0.6s")
    reg = registration_for("farm", config)
    stop = asyncio.Event()
    registrar = Registrar(config, reg)
    task = asyncio.run_coroutine_threadsafe(registrar.run(stop), role_loop.loop)
    wait_until(lambda: consul_agent.check_status(reg.check_id) == "passing", timeout=10, what="passing")
    # Wedge the role's loop (a blocking call where an await belonged) for a few TTLs.
    unwedge = threading.Event()
    role_loop.loop.call_soon_threadsafe(unwedge.wait, 20)
    try:
        wait_until(lambda: consul_agent.check_status(reg.check_id) == "critical", timeout=10,
                   what="the TTL check of a wedged loop to go critical")
        assert reg.service_id not in consul_agent.passing("streamgate-farm")
    finally:
        unwedge.set()
    wait_until(lambda: consul_agent.check_status(reg.check_id) == "passing", timeout=10,
               what="passing again once the loop runs")
    role_loop.loop.call_soon_threadsafe(stop.set)
    task.result(10)
    assert reg.service_id not in consul_agent.services()


async def test_probe_reports_warning_and_reason(consul_agent: Agent) -> None:
    config = consul_agent.config(ttl="5s")
    state = {"status": "warning", "note": "standby: another broker leads"}
    registrar = Registrar(config, registration_for("broker", config),
                          probe=lambda: (state["status"], state["note"]))  # type: ignore[arg-type,return-value]
    stop = asyncio.Event()
    task = asyncio.create_task(registrar.run(stop))
    try:
        check_id = registrar.registration.check_id

        async def status() -> str | None:
            return await asyncio.to_thread(consul_agent.check_status, check_id)

        await async_wait_until(lambda: _eq(status(), "warning"), timeout=10, what="warning")
        check = (await asyncio.to_thread(consul_agent.checks))[check_id]
        assert check["Output"] == "standby: another broker leads"
        # Not passing, so discovery (passing only) does not offer a standby broker.
        assert not await asyncio.to_thread(consul_agent.passing, "streamgate-broker")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_failing_probe_reports_critical_and_recovers(consul_agent: Agent) -> None:
    config = consul_agent.config(ttl="0.6s")
    broken = {"on": True}

    def probe():  # type: ignore[no-untyped-def]
        if broken["on"]:
            raise RuntimeError("queue unreadable")
        return ("passing", "")

    registrar = Registrar(config, registration_for("broker", config), probe=probe)
    stop = asyncio.Event()
    task = asyncio.create_task(registrar.run(stop))
    try:
        check_id = registrar.registration.check_id

        async def check() -> dict:  # type: ignore[type-arg]
            return (await asyncio.to_thread(consul_agent.checks)).get(check_id, {})

        # Critical with the probe's reason (a TTL that lapses first on a loaded machine is critical
        # too, with no output: the registrar's update follows it).
        found = await async_wait_until(lambda: _critical(check(), with_output=True), timeout=10,
                                       what="critical with the probe's output")
        assert "health probe failed: RuntimeError: queue unreadable" in found["Output"]
        broken["on"] = False
        await async_wait_until(lambda: _eq(_status(check()), "passing"), timeout=10, what="passing")
        assert not task.done()  # the registrar kept going
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _critical(coro, with_output: bool = False):  # type: ignore[no-untyped-def]
    check = await coro
    if check.get("Status") != "critical" or (with_output and not check.get("Output")):
        return None
    return check


async def _status(coro):  # type: ignore[no-untyped-def]
    return (await coro).get("Status")


async def _eq(coro, value) -> bool:  # type: ignore[no-untyped-def]
    return (await coro) == value


async def test_http_check_follows_the_health_endpoint(consul_agent: Agent) -> None:
    port = free_port()
    config = consul_agent.config(check_interval="0.2s", advertise_address="127.0.0.1")
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    reg = registration_for("edge", config, port=port)
    assert reg.check == "http" and reg.check_url == f"http://127.0.0.1:{port}/health"
    stop = asyncio.Event()
    task = asyncio.create_task(Registrar(config, reg).run(stop))
    try:
        async def status() -> str | None:
            return await asyncio.to_thread(consul_agent.check_status, reg.check_id)

        await async_wait_until(lambda: _eq(status(), "passing"), timeout=15, what="HTTP check passing")
        await runner.cleanup()  # the edge stops answering
        await async_wait_until(lambda: _eq(status(), "critical"), timeout=15, what="HTTP check critical")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await runner.cleanup()
    assert reg.service_id not in await asyncio.to_thread(consul_agent.services)


async def test_unreachable_consul_is_retried_with_backoff(make_standin, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    config = Agent(f"http://127.0.0.1:{port}").config(ttl="5s")
    registrar = Registrar(config, registration_for("broker", config))
    stop = asyncio.Event()
    caplog.set_level(logging.WARNING, "streamgate.registry")
    task = asyncio.create_task(registrar.run(stop))
    try:
        await async_wait_until(lambda: _true(registrar.attempts >= 2), timeout=10, what="two attempts")
        assert not registrar.registered.is_set()
        messages = [r.getMessage() for r in caplog.records]
        assert any("next attempt in 1.0s" in m for m in messages), messages
        assert any("next attempt in 2.0s" in m for m in messages), messages
        standin = await asyncio.to_thread(make_standin, port)  # Consul comes back
        await asyncio.wait_for(registrar.registered.wait(), 10)
        assert registrar.registration.service_id in standin.snapshot()["services"]
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _true(value: bool) -> bool:
    return value


async def test_forgotten_registration_is_renewed(standin) -> None:  # type: ignore[no-untyped-def]
    config = Agent(standin.address).config(ttl="0.6s")
    registrar = Registrar(config, registration_for("farm", config))
    stop = asyncio.Event()
    task = asyncio.create_task(registrar.run(stop))
    try:
        await asyncio.wait_for(registrar.registered.wait(), 10)
        sid = registrar.registration.service_id
        # The agent restarts and forgets its services: the next refresh gets False (unknown check).
        await asyncio.to_thread(standin.call, lambda: (standin.services.clear(), standin.checks.clear()))
        before = sum(1 for m, p in standin.requests if p == "/v1/agent/service/register")
        await async_wait_until(
            lambda: _true(sum(1 for m, p in standin.requests if p == "/v1/agent/service/register") > before
                          and sid in standin.snapshot()["services"]),
            timeout=10, what="re-registration")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_deregister_of_an_unknown_id_answers_false(consul_agent: Agent) -> None:
    config = consul_agent.config()
    async with consul_client(config.registry) as client:
        assert await client.agent.service.deregister("no-such-service") is False


async def test_drain_puts_this_nodes_services_in_maintenance(consul_agent: Agent) -> None:
    config = consul_agent.config(ttl="10s")
    stops, tasks, registrars = [], [], []
    for role in ("broker", "farm"):
        stop = asyncio.Event()
        registrar = Registrar(config, registration_for(role, config))
        registrars.append(registrar)
        stops.append(stop)
        tasks.append(asyncio.create_task(registrar.run(stop)))
    try:
        for registrar in registrars:
            await asyncio.wait_for(registrar.registered.wait(), 10)
        ids = await set_maintenance(config, True, "kernel upgrade")
        assert sorted(ids) == sorted(r.registration.service_id for r in registrars)
        assert not await asyncio.to_thread(consul_agent.passing, "streamgate-broker")
        checks = await asyncio.to_thread(consul_agent.checks)
        maint = checks[f"_service_maintenance:{registrars[0].registration.service_id}"]
        assert maint["Status"] == "critical" and maint["Notes"] == "kernel upgrade"
        assert await set_maintenance(config, False) == ids
        await async_wait_until(lambda: asyncio.to_thread(consul_agent.passing, "streamgate-broker"),
                               timeout=10, what="broker passing after undrain")
    finally:
        for stop in stops:
            stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


def test_drain_and_undrain_commands(consul_agent: Agent, capsys: pytest.CaptureFixture[str]) -> None:
    from streamgate.control.commands import drain, undrain

    config = consul_agent.config(ttl="30s")
    reg = registration_for("broker", config)
    import json
    import urllib.request

    # Registered through the agent's API directly, as any tool could; drain finds it by its meta.
    body = json.dumps({"Name": reg.name, "ID": reg.service_id, "Port": reg.port, "Meta": reg.meta,
                       "Check": {"TTL": "30s", "Status": "passing"}}).encode()
    urllib.request.urlopen(urllib.request.Request(consul_agent.address + "/v1/agent/service/register",
                                                  data=body, method="PUT"), timeout=5).close()
    assert drain.main(_ns(reason="test"), config) == 0
    assert f"{reg.service_id}: in maintenance" in capsys.readouterr().out
    assert reg.service_id not in consul_agent.passing(reg.name)
    assert undrain.main(_ns(), config) == 0
    assert f"{reg.service_id}: out of maintenance" in capsys.readouterr().out
    assert reg.service_id in consul_agent.passing(reg.name)
    # Without Consul configured the verbs say so and exit 2.
    from streamgate.common.config import config_from_tree

    assert drain.main(_ns(reason="x"), config_from_tree({})) == 2
    # With Consul unreachable they exit 1 with the address.
    down = Agent(f"http://127.0.0.1:{free_port()}").config()
    assert drain.main(_ns(reason="x"), down) == 1
    assert "unreachable" in capsys.readouterr().err


def _ns(**kw):  # type: ignore[no-untyped-def]
    import argparse

    return argparse.Namespace(**kw)
