"""The seed platform's configuration, accepted as its operators wrote it.

StreamGate answers a Go platform whose ``config.yaml`` says ``deployment.mode: monolith`` or
``microservice``, names one of nine services in ``deployment.service_name``, and carries keys for
things StreamGate does differently (a gRPC port, an event bus). This module holds that mapping:
the spellings rewritten in the raw tree before it is typed (:func:`normalise_tree`), the service
table (:data:`SEED_SERVICES`), and the one line each differing key gets (:func:`notices`).
Nothing here reads the environment; common/config.py does, then calls in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamgate.common.config import Config

# The seed's deployment modes and the StreamGate mode that does the same thing.
MODE_ALIASES: dict[str, str] = {"monolith": "single", "microservice": "fleet"}

# The seed's nine services -> the StreamGate role (CLI verb) that does that job. The edge is one
# process doing the gateway's, upload's, streaming's, metadata's, auth's and cache's work; the
# seed's worker ran queued background jobs, which here is the broker holding the farm's jobs
# (leases, retries, dead letters, the journal) that the farm's workers pull.
SEED_SERVICES: dict[str, str] = {
    "api-gateway": "edge",
    "upload": "edge",
    "streaming": "edge",
    "metadata": "edge",
    "auth": "edge",
    "cache": "edge",
    "transcoder": "farm",
    "worker": "broker",
    "monitor": "control",
}


class SeedConfigError(ValueError):
    """A seed spelling that cannot be mapped; the message starts with the key path."""


def normalise_tree(tree: dict[str, Any]) -> None:
    """Rewrite the seed's spellings in the raw tree, in place, before it is typed.

    ``deployment.mode: monolith|microservice`` becomes ``single|fleet``; ``registry.consul.address``
    becomes ``registry.consul_address`` (the seed nests it, StreamGate always had it flat).
    """
    deployment = tree.get("deployment")
    if isinstance(deployment, dict) and isinstance(deployment.get("mode"), str):
        deployment["mode"] = MODE_ALIASES.get(deployment["mode"], deployment["mode"])
    registry = tree.get("registry")
    if isinstance(registry, dict) and "consul" in registry:
        consul = registry.pop("consul")
        if not isinstance(consul, dict):
            raise SeedConfigError("registry.consul: Expected a mapping with address")
        unknown = sorted(set(consul) - {"address"})
        if unknown:
            raise SeedConfigError(f"registry.consul.{unknown[0]}: unknown key")
        if "address" in consul:
            flat = registry.get("consul_address")
            if flat is not None and flat != consul["address"]:
                raise SeedConfigError("registry.consul.address: contradicts registry.consul_address "
                                      f"({consul['address']!r} vs {flat!r}); keep one")
            registry["consul_address"] = consul["address"]


def service_role(service_name: str) -> str | None:
    """The StreamGate role running the seed service ``service_name``; None for an empty name."""
    if not service_name:
        return None
    return SEED_SERVICES[service_name]


def check_service_name(service_name: str) -> str | None:
    """Why ``deployment.service_name`` cannot be used, or None."""
    if not service_name or service_name in SEED_SERVICES:
        return None
    return (f"{service_name!r} is not one of the seed's services ({', '.join(SEED_SERVICES)}); "
            "the Consul service-name prefix it used to be is now registry.service_prefix")


def notices(config: Config, verb: str | None = None) -> list[str]:
    """One line per seed key StreamGate takes but does differently, for the serving process to log.

    ``verb`` is the command being run: a role verb that is not the role of
    ``deployment.service_name`` gets a line too (the command wins).
    """
    lines: list[str] = []
    role = service_role(config.deployment.service_name)
    if verb in set(SEED_SERVICES.values()) and role not in (None, verb):
        lines.append(f"deployment.service_name {config.deployment.service_name} is the {role} role, "
                     f"but the command runs {verb}: running {verb}")
    if config.grpc.port:
        lines.append(f"grpc.port {config.grpc.port}: StreamGate has no gRPC; nothing listens there. "
                     "Roles talk HTTP (edge server.port, control server.control_port) and ZeroMQ "
                     f"(broker ports {config.broker.frontend_port}-{config.broker.publisher_port})")
    bus = config.eventbus
    if bus.type == "nats":
        lines.append(f"eventbus.type nats ({bus.nats.url or 'no url'}): StreamGate publishes nothing to "
                     "NATS; job events go out on the broker's ZeroMQ PUB socket "
                     f"(broker.publisher_port {config.broker.publisher_port}) and video state is in the "
                     "catalog API (/api/v1/videos)")
    elif bus.type == "memory" or bus.nats.url:
        unused = f" (eventbus.nats.url {bus.nats.url} unused)" if bus.nats.url else ""
        lines.append(f"eventbus.type {bus.type or 'unset'}: StreamGate's roles pass jobs and events over "
                     f"ZeroMQ (ipc:// on a single node, tcp:// in a fleet), no event bus{unused}")
    return lines
