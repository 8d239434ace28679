"""The fleet view: every instance and its health, the broker's queue and farm figures, edge traffic.

Instances come from Consul (``/v1/catalog/services`` for StreamGate's services, then
``/v1/health/service/<name>`` for every instance, passing or not) or, without a registry, from
this node's config. The broker's figures come from the farm's client (``BrokerClient.stats()``,
common/broker_client.py); each edge's traffic from its Prometheus ``/metrics``. A part that cannot be
reached is reported as such (``up: false`` with the error), never as a failure of the view.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import msgspec

from streamgate.common.broker_client import BrokerClient
from streamgate.common.config import BrokerEndpoints, Config
from streamgate.common.consul.client import ConsulClient
from streamgate.common.consul.discovery import Discovery
from streamgate.common.consul.registry import CONSUL_ERRORS, REQUEST_TIMEOUT_S, registration_for
from streamgate.common.protocol import FarmStats, ScalingDecision
from streamgate.control.scaling import decide

log = logging.getLogger("streamgate.fleet")

MAINTENANCE_PREFIXES = ("_service_maintenance:", "_node_maintenance")


class CheckState(msgspec.Struct, frozen=True):
    check_id: str
    status: str
    output: str = ""


class FleetInstance(msgspec.Struct, kw_only=True):
    role: str
    service_id: str
    address: str
    port: int
    node: str = ""
    version: str = ""
    status: str = "unknown"  # passing, warning, critical, maintenance, or unknown without a registry
    checks: list[CheckState] = msgspec.field(default_factory=list)


class BrokerFigures(FarmStats, kw_only=True):
    """The broker's own figures (FarmStats), with where it was asked and whether it answered."""

    up: bool = False
    endpoint: str = ""
    error: str = ""
    leader: str = ""  # who holds the broker leader lock in a fleet (farm/failover.py)


class EdgeTraffic(msgspec.Struct, kw_only=True):
    service_id: str
    url: str
    up: bool = False
    error: str = ""
    requests_total: float = 0.0
    bytes_sent_total: float = 0.0


class FleetView(msgspec.Struct, kw_only=True):
    """``GET /api/v1/fleet``."""

    generated_at: float
    registry: str
    instances: list[FleetInstance]
    broker: BrokerFigures
    edges: list[EdgeTraffic]
    scaling: ScalingDecision


def instance_status(checks: list[CheckState]) -> str:
    """Consul's aggregate: maintenance wins, then the worst check (critical > warning > passing)."""
    if any(c.check_id.startswith(MAINTENANCE_PREFIXES) for c in checks):
        return "maintenance"
    states = {c.status for c in checks}
    for status in ("critical", "warning", "passing"):
        if status in states:
            return status
    return "unknown"


async def consul_instances(client: ConsulClient, config: Config) -> list[FleetInstance]:
    prefix = f"{config.registry.service_prefix}-"
    _, services = await asyncio.wait_for(client.catalog.services(), REQUEST_TIMEOUT_S)
    found: list[FleetInstance] = []
    for name in sorted(n for n in (services or {}) if n.startswith(prefix)):
        _, entries = await asyncio.wait_for(client.health.service(name), REQUEST_TIMEOUT_S)
        for entry in entries or []:
            service, node = entry["Service"], entry.get("Node") or {}
            checks = [CheckState(c["CheckID"], c["Status"], c.get("Output") or c.get("Notes") or "")
                      for c in entry.get("Checks") or [] if c.get("CheckID") != "serfHealth"]
            meta = service.get("Meta") or {}
            found.append(FleetInstance(
                role=meta.get("role") or name.removeprefix(prefix), service_id=service["ID"],
                address=service.get("Address") or node.get("Address", ""), port=int(service.get("Port") or 0),
                node=meta.get("node") or node.get("Node", ""), version=meta.get("version", ""),
                status=instance_status(checks), checks=checks))
    return found


def static_instances(config: Config) -> list[FleetInstance]:
    """Without a registry: this node's roles as config describes them, and the static origins."""
    found = []
    for role in ("edge", "broker", "farm", "control"):
        reg = registration_for(role, config)
        address, port = "127.0.0.1", reg.port
        if role == "broker" and config.deployment.mode == "single":
            address, port = config.broker_endpoints.frontend, 0  # ipc:// on a single node
        found.append(FleetInstance(role=role, service_id=reg.service_id, address=address,
                                   port=port, node=config.node_name, version=reg.meta["version"]))
    for url in config.registry.static_origins:
        found.append(FleetInstance(role="origin", service_id=url, address=url, port=0))
    return found


async def broker_figures(config: Config, discovery: Discovery) -> BrokerFigures:
    endpoints = await discovery.broker_endpoints()
    try:
        stats = await asyncio.wait_for(_broker_stats(config, endpoints),
                                       float(config.control.scrape_timeout) + 1)
    except Exception as exc:  # a down broker is a figure of the fleet, not a control failure
        return BrokerFigures(endpoint=endpoints.frontend, error=f"{type(exc).__name__}: {exc}")
    return BrokerFigures(endpoint=endpoints.frontend, up=True, **msgspec.structs.asdict(stats))


async def broker_leader(client: ConsulClient, config: Config) -> str:
    """The holder written in the broker leader lock, or "" when nobody holds it."""
    from streamgate.farm.failover import lock_key

    try:
        _, entry = await asyncio.wait_for(client.kv.get(lock_key(config)), REQUEST_TIMEOUT_S)
    except CONSUL_ERRORS:
        return ""
    if not entry or not entry.get("Session") or entry.get("Value") is None:
        return ""
    return entry["Value"].decode(errors="replace")


async def _broker_stats(config: Config, endpoints: BrokerEndpoints) -> FarmStats:
    client = BrokerClient(endpoints, timeout_s=float(config.control.scrape_timeout))
    try:
        return await client.stats()
    finally:
        await client.close()


# The edge's own series (edge/metrics.py); families are named without the _total suffix.
EDGE_REQUESTS = "streamgate_edge_requests"
EDGE_BYTES = "streamgate_edge_response_bytes"


def _sum_families(text: str) -> tuple[float, float]:
    """Requests answered and body bytes sent, summed over labels, from an edge's /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    requests = sent = 0.0
    for family in text_string_to_metric_families(text):
        total = sum(s.value for s in family.samples if s.name.endswith("_total"))
        if family.name == EDGE_REQUESTS:
            requests += total
        elif family.name == EDGE_BYTES:
            sent += total
    return requests, sent


async def edge_traffic(session: aiohttp.ClientSession, service_id: str, base_url: str,
                       timeout_s: float) -> EdgeTraffic:
    traffic = EdgeTraffic(service_id=service_id, url=base_url)
    try:
        async with session.get(f"{base_url}/metrics", timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            if r.status != 200:
                traffic.error = f"/metrics answered {r.status}"
                return traffic
            text = await r.text()
        traffic.requests_total, traffic.bytes_sent_total = _sum_families(text)
        traffic.up = True
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        traffic.error = f"{type(exc).__name__}: {exc}"
    return traffic


async def gather_fleet(config: Config, client: ConsulClient | None, discovery: Discovery,
                       session: aiohttp.ClientSession) -> FleetView:
    """One fresh fleet view."""
    registry = "consul" if client is not None else "none"
    if client is not None:
        try:
            instances = await consul_instances(client, config)
        except CONSUL_ERRORS as exc:
            log.warning("Consul unreachable for the fleet view: %s: %s", type(exc).__name__, exc)
            registry = f"consul unreachable ({type(exc).__name__})"
            instances = static_instances(config)
    else:
        instances = static_instances(config)
    broker = await broker_figures(config, discovery)
    if client is not None:
        broker.leader = await broker_leader(client, config)
    edges_to_scrape = [(i.service_id, f"http://{i.address}:{i.port}") for i in instances
                       if i.role == "edge" and i.status in ("passing", "warning", "unknown")]
    edges = list(await asyncio.gather(*(edge_traffic(session, sid, url, float(config.control.scrape_timeout))
                                        for sid, url in edges_to_scrape)))
    farms = sum(1 for i in instances if i.role == "farm" and i.status in ("passing", "warning", "unknown"))
    scaling = decide(broker.queue_length, broker.total_workers, broker.active_workers,
                     config.transcoder.scaling_policy, farms=farms or 1, decided_at=time.time())
    return FleetView(generated_at=time.time(), registry=registry, instances=instances, broker=broker,
                     edges=edges, scaling=scaling)
