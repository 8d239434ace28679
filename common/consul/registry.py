"""Consul registration of one StreamGate instance, kept alive from the role's own event loop.

Every role registers as ``<registry.service_prefix>-<role>`` (``streamgate-edge``, ``streamgate-broker``, ...)
with an id per instance, its address and port, tags and meta (version, node, role). Edges and the
control service get an HTTP check on ``/health`` that the agent polls; the broker and the farm
get a TTL check that :class:`Registrar` refreshes from the role's event loop, so a wedged loop
stops the refreshes and Consul marks the instance critical after the TTL.

Consul being unreachable never stops the role: registration is retried with doubling backoff
(logged with the next attempt), and a refresh the agent answers with "unknown check" (py-consul
returns ``False``: the agent restarted and forgot us) re-registers at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import urllib.parse
from collections.abc import Callable
from typing import Literal

import aiohttp
import msgspec
from consul import ConsulException

from streamgate.common.config import Config
from streamgate.common.consul.client import ConsulClient, consul_client

log = logging.getLogger("streamgate.registry")

CheckKind = Literal["http", "ttl", "none"]
Status = Literal["passing", "warning", "critical"]
# A role's own view of its health: (status, note); the registrar reports it in the TTL check.
Probe = Callable[[], tuple[Status, str]]

# What may go wrong talking to the agent: connection errors, timeouts, 5xx and 4xx from Consul.
CONSUL_ERRORS = (aiohttp.ClientError, TimeoutError, OSError, ConsulException)
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0
REQUEST_TIMEOUT_S = 5.0


class Registration(msgspec.Struct, frozen=True, kw_only=True):
    """One instance as Consul sees it."""

    name: str
    service_id: str
    address: str
    port: int
    tags: list[str]
    meta: dict[str, str]
    check: CheckKind
    check_url: str = ""

    @property
    def check_id(self) -> str:
        # Consul names the single check of a service "service:<id>" (agent service API docs).
        return f"service:{self.service_id}"


def service_name(config: Config, role: str) -> str:
    return f"{config.registry.service_prefix}-{role}"


def _default_port_and_check(role: str, config: Config) -> tuple[int, CheckKind]:
    if role == "edge":
        return config.server.port, "http"
    if role == "control":
        return config.server.control_port, "http"
    if role == "broker":
        return config.broker.frontend_port, "ttl"
    return 0, "ttl"


def advertise_address(config: Config) -> str:
    """``registry.advertise_address``, else the local address that routes to the Consul agent."""
    if config.registry.advertise_address:
        return config.registry.advertise_address
    parsed = urllib.parse.urlsplit(config.registry.consul_address if "//" in config.registry.consul_address
                                   else f"//{config.registry.consul_address}")
    try:
        # A UDP connect sends nothing; it only asks the kernel which source address it would use.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((parsed.hostname or "127.0.0.1", parsed.port or 8500))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def registration_for(role: str, config: Config, *, port: int | None = None,
                     check: CheckKind | None = None) -> Registration:
    """The registration of this instance of ``role``; ``port``/``check`` override the role's defaults."""
    from streamgate import __version__

    default_port, default_check = _default_port_and_check(role, config)
    port = default_port if port is None else port
    check = default_check if check is None else check
    address = advertise_address(config)
    node = config.node_name
    meta = {"version": config.deployment.version or __version__, "node": node, "role": role,
            "mode": config.deployment.mode}
    if role == "broker":
        # Discovery needs all three broker sockets, not only the registered (frontend) port.
        meta.update(frontend_port=str(config.broker.frontend_port),
                    backend_port=str(config.broker.backend_port),
                    publisher_port=str(config.broker.publisher_port))
    if role == "control":
        meta["http_port"] = str(config.server.control_port)
    return Registration(
        name=service_name(config, role),
        service_id=f"{service_name(config, role)}-{node}" + (f"-{port}" if port else ""),
        address=address,
        port=port,
        tags=[role, config.deployment.mode, *config.registry.tags],
        meta=meta,
        check=check,
        check_url=f"http://{address}:{port}/health" if check == "http" else "",
    )


def _duration(seconds: float) -> str:
    return f"{max(float(seconds), 0.001):g}s"


class Registrar:
    """Registers one instance, keeps its TTL check passing, deregisters it on the way out."""

    def __init__(self, config: Config, registration: Registration, probe: Probe | None = None) -> None:
        self.config = config
        self.registration = registration
        self.probe = probe
        self.registered = asyncio.Event()
        self.attempts = 0

    def _check_definition(self) -> dict[str, str] | None:
        reg, registry = self.registration, self.config.registry
        if reg.check == "http":
            return {"http": reg.check_url, "interval": _duration(registry.check_interval),
                    "timeout": _duration(min(float(registry.check_interval), 5.0)),
                    "DeregisterCriticalServiceAfter": _duration(registry.deregister_critical_after)}
        if reg.check == "ttl":
            return {"ttl": _duration(registry.ttl),
                    "DeregisterCriticalServiceAfter": _duration(registry.deregister_critical_after)}
        return None

    async def register(self, client: ConsulClient) -> bool:
        reg = self.registration
        ok = await asyncio.wait_for(client.agent.service.register(
            reg.name, service_id=reg.service_id, address=reg.address, port=reg.port or None,
            tags=reg.tags, meta=reg.meta, check=self._check_definition(),
            replace_existing_checks=True,
        ), REQUEST_TIMEOUT_S)
        if ok and reg.check == "ttl":
            # Pass at once, so the instance is healthy now rather than after the first refresh.
            ok = await self.refresh(client)
        return bool(ok)

    async def refresh(self, client: ConsulClient) -> bool:
        """Report this loop's health in the TTL check; False when the agent does not know the check."""
        try:
            status, note = self.probe() if self.probe else ("passing", "")
        except Exception as exc:  # a failing probe is the role's health, not the registrar's end
            status, note = "critical", f"health probe failed: {type(exc).__name__}: {exc}"
        update = {"passing": client.agent.check.ttl_pass, "warning": client.agent.check.ttl_warn,
                  "critical": client.agent.check.ttl_fail}[status]
        return bool(await asyncio.wait_for(update(self.registration.check_id, notes=note or None),
                                           REQUEST_TIMEOUT_S))

    async def still_known(self, client: ConsulClient) -> bool:
        services = await asyncio.wait_for(client.agent.services(), REQUEST_TIMEOUT_S)
        return self.registration.service_id in (services or {})

    async def deregister(self, client: ConsulClient) -> bool:
        ok = await asyncio.wait_for(client.agent.service.deregister(self.registration.service_id),
                                    REQUEST_TIMEOUT_S)
        if ok:
            log.info("deregistered %s from Consul", self.registration.service_id)
        else:
            log.warning("Consul did not know %s at deregistration", self.registration.service_id)
        return bool(ok)

    def _interval_s(self) -> float:
        # A TTL check is refreshed three times per TTL, so one late turn does not flap it.
        if self.registration.check == "ttl":
            return max(float(self.config.registry.ttl) / 3, 0.05)
        return max(float(self.config.registry.check_interval), 0.05)

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: register (retrying with backoff), refresh; then deregister. Never raises."""
        reg = self.registration
        backoff = BACKOFF_INITIAL_S
        async with consul_client(self.config.registry) as client:
            while not stop.is_set():
                try:
                    if not self.registered.is_set():
                        self.attempts += 1
                        if not await self.register(client):
                            raise ConsulException("the agent refused the registration")
                        self.registered.set()
                        backoff = BACKOFF_INITIAL_S
                        log.info("registered %s (%s %s:%d, %s check) in Consul at %s", reg.service_id,
                                 reg.name, reg.address, reg.port, reg.check, self.config.registry.consul_address)
                    else:
                        known = await (self.refresh(client) if reg.check == "ttl" else self.still_known(client))
                        if not known:
                            log.warning("Consul forgot %s (agent restarted?); registering again", reg.service_id)
                            self.registered.clear()
                            continue
                    wait_s = self._interval_s()
                except CONSUL_ERRORS as exc:
                    self.registered.clear()
                    wait_s = backoff
                    log.warning("Consul at %s unreachable for %s (attempt %d: %s: %s); next attempt in %.1fs",
                                self.config.registry.consul_address, reg.service_id, self.attempts,
                                type(exc).__name__, exc, wait_s)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                try:
                    await asyncio.wait_for(stop.wait(), wait_s)
                except TimeoutError:
                    pass
            if self.registered.is_set():
                try:
                    await self.deregister(client)
                except CONSUL_ERRORS as exc:
                    log.warning("could not deregister %s: %s: %s", reg.service_id, type(exc).__name__, exc)
                self.registered.clear()


async def keep_registered(role: str, config: Config, stop: asyncio.Event, *, port: int | None = None,
                          check: CheckKind | None = None, probe: Probe | None = None) -> None:
    """The runner's hook (common/service.py): register ``role`` until ``stop``, then deregister."""
    registration = registration_for(role, config, port=port, check=check)
    await Registrar(config, registration, probe).run(stop)


async def set_maintenance(config: Config, enable: bool, reason: str = "") -> list[str]:
    """Consul maintenance mode on/off for every StreamGate service of this node; returns their ids."""
    prefix = f"{config.registry.service_prefix}-"
    async with consul_client(config.registry) as client:
        services = await asyncio.wait_for(client.agent.services(), REQUEST_TIMEOUT_S) or {}
        ids = sorted(sid for sid, s in services.items()
                     if s.get("Service", "").startswith(prefix) and s.get("Meta", {}).get("node") == config.node_name)
        for sid in ids:
            await asyncio.wait_for(client.agent.service.maintenance(sid, enable, reason or None),
                                   REQUEST_TIMEOUT_S)
    return ids
