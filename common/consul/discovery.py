"""Where the other roles are: the broker (for farms and edges) and the origins (for edges).

With ``registry.type: consul`` a :class:`Discovery` watches Consul's health endpoint for each
service it is asked about, passing instances only, and keeps the answer fresh with blocking
queries (``?index=<X-Consul-Index>&wait=``, Consul's "blocking queries" API docs). While Consul
cannot be reached the last answer stays in use; when it never answered or lists no passing
instance, the static addresses in config are the fallback:
``broker.host`` and ports, ``edge.origin_url`` and ``registry.static_origins``. A single node
(``registry.type: none``) never talks to Consul at all.

The seam for other rooms (see docs/control-plane.md)::

    async with Discovery(config) as discovery:
        endpoints = await discovery.broker_endpoints()   # BrokerEndpoints; the current leader
        origins = await discovery.origins()              # ["http://10.0.0.5:8080", ...]
        await discovery.wait_changed("broker")           # returns when the broker set changed
        async for endpoints in discovery.follow_broker(): # now, then on every leader change
            ...
        async for decision in discovery.follow_scaling(): # a farm: run decision.per_farm workers
            ...
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from streamgate.common.config import BrokerEndpoints, Config
from streamgate.common.consul.client import ConsulClient, consul_client
from streamgate.common.consul.registry import CONSUL_ERRORS, service_name
from streamgate.common.protocol import ScalingDecision

log = logging.getLogger("streamgate.discovery")

ORIGIN_TAG = "origin"
FIRST_ANSWER_TIMEOUT_S = 3.0


class Instance(msgspec.Struct, frozen=True):
    """One passing instance of a service, as Consul's health endpoint lists it."""

    service_id: str
    address: str
    port: int
    tags: list[str] = msgspec.field(default_factory=list)
    meta: dict[str, str] = msgspec.field(default_factory=dict)
    node: str = ""

    @classmethod
    def from_health(cls, entry: dict[str, Any]) -> Instance:
        service, node = entry["Service"], entry.get("Node") or {}
        # An empty service address means "the node's address" (Consul catalog docs).
        return cls(service["ID"], service.get("Address") or node.get("Address", ""), int(service.get("Port") or 0),
                   list(service.get("Tags") or []), dict(service.get("Meta") or {}), node.get("Node", ""))


class ServiceWatch:
    """The passing instances of one service, refreshed by a blocking-query loop."""

    def __init__(self, client: ConsulClient, name: str, wait_s: float, tag: str | None = None) -> None:
        self.client = client
        self.name = name
        self.tag = tag
        self.wait_s = wait_s
        self.instances: list[Instance] = []
        self.index: str | None = None
        self.answered = asyncio.Event()  # the first answer (or failure) is in
        self.version = 0  # rises with every change of ``instances``
        self._changed = asyncio.Event()
        self.failures = 0

    async def wait_newer(self, version: int) -> None:
        """Return once ``self.version`` is past ``version`` (at once if it already is)."""
        while self.version <= version:
            await self._changed.wait()

    def _publish(self, instances: list[Instance]) -> None:
        if instances != self.instances:
            self.instances = instances
            self.version += 1
            # Wake the current waiters; later ones wait for the next change.
            self._changed.set()
            self._changed = asyncio.Event()
        self.answered.set()

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                index, entries = await asyncio.wait_for(
                    self.client.health.service(self.name, index=self.index, wait=f"{self.wait_s:g}s",
                                               passing=True, tag=self.tag),
                    self.wait_s + 10)
                # A lower index means the agent's state was reset: start over (blocking query docs).
                if self.index is not None and index is not None and int(index) < int(self.index):
                    index = None
                self.index = index
                self.failures = 0
                backoff = 0.5
                self._publish(sorted((Instance.from_health(e) for e in entries or []),
                                     key=lambda i: i.service_id))
            except CONSUL_ERRORS as exc:
                self.failures += 1
                self.index = None
                self.answered.set()  # callers fall back to static config rather than wait
                log.warning("watching %s in Consul failed (%s: %s); next attempt in %.1fs",
                            self.name, type(exc).__name__, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)


class Discovery:
    """Broker endpoints and origin URLs: Consul when configured, static config otherwise."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.use_consul = config.registry.type == "consul"
        self._client: ConsulClient | None = None
        self._watches: dict[str, ServiceWatch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Discovery:
        if self.use_consul:
            self._client = consul_client(self.config.registry)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("discovery watch %s failed", task.get_name(), exc_info=task.exception())

    async def watch(self, role: str, tag: str | None = None) -> ServiceWatch | None:
        """The live watch of ``<service_name>-<role>`` (started on first use), or None without Consul."""
        if self._client is None:
            return None
        key = f"{role}/{tag or ''}"
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = ServiceWatch(self._client, service_name(self.config, role),
                                                      float(self.config.registry.watch_wait), tag)
            task = asyncio.get_running_loop().create_task(watch.run(), name=f"watch-{key}")
            self._tasks.add(task)
            task.add_done_callback(self._reap)
        try:
            await asyncio.wait_for(watch.answered.wait(), FIRST_ANSWER_TIMEOUT_S)
        except TimeoutError:
            pass
        return watch

    async def instances(self, role: str, tag: str | None = None) -> list[Instance]:
        watch = await self.watch(role, tag)
        return list(watch.instances) if watch else []

    async def wait_changed(self, role: str, tag: str | None = None, since: int | None = None) -> int:
        """Wait until the passing instances of ``role`` change after version ``since`` (default: now);
        returns the new version. Without Consul nothing ever changes: this waits forever."""
        watch = await self.watch(role, tag)
        if watch is None:
            await asyncio.Event().wait()
            return 0
        await watch.wait_newer(watch.version if since is None else since)
        return watch.version

    async def follow_broker(self) -> AsyncIterator[BrokerEndpoints]:
        """The broker's endpoints now, then again each time they change (a new leader)."""
        last: BrokerEndpoints | None = None
        while True:
            watch = await self.watch("broker")
            version = watch.version if watch else 0
            endpoints = await self.broker_endpoints()
            if endpoints != last:
                last = endpoints
                yield endpoints
            await self.wait_changed("broker", since=version)

    async def broker_endpoints(self) -> BrokerEndpoints:
        """The broker to talk to: the passing (leader) broker in Consul, else the configured one."""
        if self.config.deployment.mode == "single":
            return self.config.broker_endpoints  # ipc:// on this node; nothing to discover
        for instance in await self.instances("broker"):
            return broker_endpoints_of(instance, self.config)
        return self.config.broker_endpoints

    async def follow_scaling(self) -> AsyncIterator[ScalingDecision]:
        """The control plane's scaling decision (Consul KV), now and on every change.

        A farm converges by running ``decision.per_farm`` workers; nothing is yielded until
        control has published a decision, and never without Consul.
        """
        if self._client is None:
            await asyncio.Event().wait()
            return
        _, key = scaling_keys(self.config)
        index = None
        backoff = 0.5
        wait_s = float(self.config.registry.watch_wait)
        last: ScalingDecision | None = None
        while True:
            try:
                index, entry = await asyncio.wait_for(
                    self._client.kv.get(key, index=index, wait=f"{wait_s:g}s"), wait_s + 10)
                backoff = 0.5
            except CONSUL_ERRORS as exc:
                log.warning("following %s failed (%s: %s); next attempt in %.1fs", key, type(exc).__name__,
                            exc, backoff)
                index = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if entry is None or not entry.get("Value"):
                continue
            try:
                decision = msgspec.json.decode(entry["Value"], type=ScalingDecision)
            except msgspec.ValidationError as exc:
                log.warning("ignoring a malformed scaling decision in %s: %s", key, exc)
                continue
            if decision != last:
                last = decision
                yield decision

    async def origins(self) -> list[str]:
        """Origin base URLs: passing edges tagged ``origin`` in Consul, else the static list."""
        found = [f"http://{i.address}:{i.port}" for i in await self.instances("edge", ORIGIN_TAG)
                 if i.meta.get("node") != self.config.node_name]
        if found:
            return found
        static = [self.config.edge.origin_url] if self.config.edge.origin_url else []
        return static + [u for u in self.config.registry.static_origins if u not in static]


def broker_endpoints_of(instance: Instance, config: Config) -> BrokerEndpoints:
    """The three broker sockets of a registered broker (ports from its meta, else config)."""
    def port(key: str, default: int) -> int:
        value = instance.meta.get(key, "")
        return int(value) if value.isdigit() else default

    host = instance.address or config.broker.host
    return BrokerEndpoints(
        frontend=f"tcp://{host}:{port('frontend_port', instance.port or config.broker.frontend_port)}",
        backend=f"tcp://{host}:{port('backend_port', config.broker.backend_port)}",
        publisher=f"tcp://{host}:{port('publisher_port', config.broker.publisher_port)}",
    )


def scaling_keys(config: Config) -> tuple[str, str]:
    """Consul KV keys of the decision: the bare fleet-wide count, and the whole decision as JSON."""
    prefix = config.registry.kv_prefix.strip("/")
    return f"{prefix}/scaling/farm_workers", f"{prefix}/scaling/decision"
