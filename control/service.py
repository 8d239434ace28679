"""The control role: fleet view, scaling decision and fleet metrics over HTTP on ``server.control_port``.

- ``GET /health``: liveness (Consul's HTTP check of this instance);
- ``GET /api/v1/fleet``: :class:`~.fleet.FleetView` (instances, broker, edges, scaling);
- ``GET /api/v1/scaling``: the current :class:`~.scaling.ScalingDecision`;
- ``GET /metrics``: fleet figures in the Prometheus text format.

A refresh loop rebuilds the view every ``control.refresh_interval`` and publishes the decision to
Consul KV (``<kv_prefix>/scaling/farm_workers`` as a bare integer, ``<kv_prefix>/scaling/decision``
as JSON) when it changes; a request may ask for a fresh view with ``?refresh=1``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from streamgate.common.config import Config
from streamgate.common.consul.client import ConsulClient, consul_client
from streamgate.common.consul.discovery import Discovery, scaling_keys
from streamgate.common.consul.registry import CONSUL_ERRORS, REQUEST_TIMEOUT_S
from streamgate.common.service import ServiceContext
from streamgate.control.fleet import FleetView, gather_fleet

log = logging.getLogger("streamgate.control")

FLEET: web.AppKey[ControlState] = web.AppKey("fleet")


class ControlState:
    """The latest fleet view and what it takes to refresh and publish it."""

    def __init__(self, config: Config, client: ConsulClient | None, discovery: Discovery,
                 session: aiohttp.ClientSession) -> None:
        self.config = config
        self.client = client
        self.discovery = discovery
        self.session = session
        self.view: FleetView | None = None
        self.published: tuple[int, int] | None = None  # (farm_workers, per_farm) last put in KV
        self.publish_errors = 0
        self._lock = asyncio.Lock()

    async def refresh(self) -> FleetView:
        async with self._lock:
            self.view = await gather_fleet(self.config, self.client, self.discovery, self.session)
            await self.publish(self.view)
            return self.view

    async def current(self) -> FleetView:
        return self.view if self.view is not None else await self.refresh()

    async def publish(self, view: FleetView) -> None:
        # Without the broker's figures the decision would only echo the policy's floor: keep the last.
        if self.client is None or not self.config.control.publish_scaling or not view.broker.up:
            return
        decision = view.scaling
        if self.published == (decision.farm_workers, decision.per_farm):
            return
        count_key, decision_key = scaling_keys(self.config)
        try:
            await asyncio.wait_for(self.client.kv.put(count_key, str(decision.farm_workers)), REQUEST_TIMEOUT_S)
            await asyncio.wait_for(self.client.kv.put(decision_key, msgspec.json.encode(decision).decode()),
                                   REQUEST_TIMEOUT_S)
        except CONSUL_ERRORS as exc:
            self.publish_errors += 1
            log.warning("could not publish the scaling decision to Consul: %s: %s", type(exc).__name__, exc)
            return
        self.published = (decision.farm_workers, decision.per_farm)
        log.info("scaling: %d farm workers (%d per farm): %s", decision.farm_workers, decision.per_farm,
                 decision.reason)


async def health(request: web.Request) -> web.Response:
    from streamgate import __version__

    return web.json_response({"status": "ok", "role": "control", "version": __version__})


async def fleet(request: web.Request) -> web.Response:
    state: ControlState = request.app[FLEET]
    view = await (state.refresh() if request.query.get("refresh") else state.current())
    return web.Response(body=msgspec.json.encode(view), content_type="application/json")


async def scaling(request: web.Request) -> web.Response:
    state: ControlState = request.app[FLEET]
    view = await (state.refresh() if request.query.get("refresh") else state.current())
    return web.Response(body=msgspec.json.encode(view.scaling), content_type="application/json")


class FleetCollector:
    """A Prometheus collector over the latest view (no per-process state: control is one process)."""

    def __init__(self, state: ControlState) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        view = self.state.view
        if view is None:
            return
        instances = GaugeMetricFamily("streamgate_fleet_instances", "Registered instances by role and health",
                                      labels=["role", "status"])
        counts: dict[tuple[str, str], int] = {}
        for inst in view.instances:
            counts[(inst.role, inst.status)] = counts.get((inst.role, inst.status), 0) + 1
        for (role, status), n in sorted(counts.items()):
            instances.add_metric([role, status], n)
        yield instances
        b = view.broker
        yield GaugeMetricFamily("streamgate_fleet_broker_up", "1 when the broker answered", value=int(b.up))
        leader = GaugeMetricFamily("streamgate_fleet_broker_leader", "1 for the broker holding the leader lock",
                                   labels=["holder"])
        if b.leader:
            leader.add_metric([b.leader], 1)
        yield leader
        yield GaugeMetricFamily("streamgate_fleet_queue_length", "Jobs waiting in the broker", value=b.queue_length)
        workers = GaugeMetricFamily("streamgate_fleet_workers", "Farm workers by state", labels=["state"])
        for name, value in (("total", b.total_workers), ("active", b.active_workers),
                            ("idle", b.idle_workers), ("unhealthy", b.unhealthy_workers)):
            workers.add_metric([name], value)
        yield workers
        tasks = CounterMetricFamily("streamgate_fleet_tasks", "Transcode tasks by outcome", labels=["outcome"])
        tasks.add_metric(["processed"], b.total_tasks_processed)
        tasks.add_metric(["failed"], b.total_tasks_failed)
        yield tasks
        yield GaugeMetricFamily("streamgate_fleet_average_task_seconds", "Mean successful task time",
                                value=b.average_task_time)
        requests = CounterMetricFamily("streamgate_fleet_edge_requests", "HTTP requests served per edge",
                                       labels=["instance"])
        sent = CounterMetricFamily("streamgate_fleet_edge_sent_bytes", "Bytes sent per edge", labels=["instance"])
        up = GaugeMetricFamily("streamgate_fleet_edge_up", "1 when the edge's /metrics answered",
                               labels=["instance"])
        for edge in view.edges:
            requests.add_metric([edge.service_id], edge.requests_total)
            sent.add_metric([edge.service_id], edge.bytes_sent_total)
            up.add_metric([edge.service_id], int(edge.up))
        yield from (requests, sent, up)
        s = view.scaling
        yield GaugeMetricFamily("streamgate_scaling_farm_workers", "Farm workers the fleet should run",
                                value=s.farm_workers)
        yield GaugeMetricFamily("streamgate_scaling_per_farm_workers", "Farm workers each farm should run",
                                value=s.per_farm)
        yield GaugeMetricFamily("streamgate_scaling_pressure", "Queue length over the target queue length",
                                value=s.pressure)
        yield CounterMetricFamily("streamgate_scaling_publish_errors", "Failed Consul KV publications",
                                  value=self.state.publish_errors)
        yield GaugeMetricFamily("streamgate_fleet_view_timestamp_seconds", "When the view was built",
                                value=view.generated_at)


async def metrics(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    state: ControlState = request.app[FLEET]
    await state.current()
    registry = CollectorRegistry()
    registry.register(FleetCollector(state))
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(state: ControlState) -> web.Application:
    app = web.Application()
    app[FLEET] = state
    app.router.add_get("/health", health)
    app.router.add_get("/api/v1/fleet", fleet)
    app.router.add_get("/api/v1/scaling", scaling)
    app.router.add_get("/metrics", metrics)
    return app


async def refresh_loop(state: ControlState, stop: asyncio.Event) -> None:
    interval = max(float(state.config.control.refresh_interval), 0.1)
    while not stop.is_set():
        started = time.monotonic()
        try:
            await state.refresh()
        except Exception:  # one bad turn must not end the control plane's view
            log.exception("fleet refresh failed")
        try:
            await asyncio.wait_for(stop.wait(), max(interval - (time.monotonic() - started), 0.05))
        except TimeoutError:
            pass


async def serve(ctx: ServiceContext) -> None:
    config = ctx.config
    client = consul_client(config.registry) if config.registry.type == "consul" else None
    async with Discovery(config) as discovery, aiohttp.ClientSession() as session:
        state = ControlState(config, client, discovery, session)
        runner = web.AppRunner(build_app(state), handle_signals=False, access_log=None,
                               shutdown_timeout=float(config.server.shutdown_timeout))
        await runner.setup()
        try:
            site = web.TCPSite(runner, config.server.host, config.server.control_port)
            await site.start()
            ctx.ready(f"control on {config.server.host}:{config.server.control_port}")
            await refresh_loop(state, ctx.stop)
        finally:
            await runner.cleanup()
            if client is not None:
                await client.close()
