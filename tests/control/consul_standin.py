"""A STAND-IN for the Consul agent's HTTP API, for tests only (no Consul agent can be installed here).

This is the one mock the project allows. It serves the subset of endpoints py-consul calls for
StreamGate, written from Consul's HTTP API documentation (developer.hashicorp.com/consul/api-docs):

- agent: ``/v1/agent/service/register``, ``/v1/agent/service/deregister/{id}``,
  ``/v1/agent/service/maintenance/{id}``, ``/v1/agent/check/{pass,warn,fail}/{check_id}``,
  ``/v1/agent/services``, ``/v1/agent/checks``, ``/v1/agent/self``, ``/v1/agent/maintenance`` (node)
- agent health: ``/v1/agent/health/service/name/{name}`` and ``/v1/agent/health/service/id/{id}``
  (``?format=text``): the aggregated status of the instance's checks (node checks included) as
  200 passing, 429 warning, 503 critical or maintenance, 404 unknown service
- health: ``/v1/health/service/{name}`` (``passing``, ``tag``), with ``X-Consul-Index`` and
  blocking queries (``?index=&wait=``)
- catalog: ``/v1/catalog/services``, ``/v1/catalog/service/{name}``
- KV: ``/v1/kv/{key}`` GET (``recurse``, ``keys``, ``raw``, blocking), PUT (``cas``, ``acquire``,
  ``release``, ``flags``), DELETE (``recurse``, ``cas``)
- sessions: ``/v1/session/create``, ``destroy/{id}``, ``renew/{id}``, ``info/{id}``, ``list``
- ``/v1/status/leader``

Semantics kept from the docs: a service's checks get ids ``service:<id>`` (``service:<id>:<n>``
when it has several); a check starts ``critical`` unless ``Status`` is given; a TTL check turns
critical when not refreshed within its TTL; HTTP checks are polled at their interval (2xx passing,
429 warning, else critical); service maintenance adds a critical ``_service_maintenance:<id>``
check and node maintenance a critical ``_node_maintenance`` check, both aggregated as
``maintenance``; a session is invalidated when its TTL lapses or one of its checks goes critical, releasing
(or deleting, by ``Behavior``) its locks, and a lock it held cannot be re-acquired for
``LockDelay``; the index only rises, on every change of state. Not modelled: datacenters, ACLs,
``DeregisterCriticalServiceAfter`` reaping, anti-entropy, the agent's own node checks
(``serfHealth`` is always passing).

Run it in a thread (``ConsulStandin().start()``) so synchronous tests and subprocesses can use it;
``ConsulStandin(host=...)`` listens on another address (a fleet bridge, so hosts register into it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

NODE = "standin-node"
NODE_ADDRESS = "127.0.0.1"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)?$")
NODE_MAINTENANCE = "_node_maintenance"
SERVICE_MAINTENANCE = "_service_maintenance:"
# Consul's agent health endpoints answer the aggregated status with these codes (agent service API docs).
AGGREGATED_HTTP = {"passing": 200, "warning": 429, "critical": 503, "maintenance": 503}
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Go duration strings as Consul takes them ("10s", "1.5m", "500ms"); bare numbers are seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    match = _DURATION.match(str(value).strip())
    if not match:
        raise ValueError(f"bad duration {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _lower(payload: dict[str, Any]) -> dict[str, Any]:
    # Consul decodes JSON bodies case-insensitively; py-consul sends lowercase keys.
    return {k.lower(): v for k, v in payload.items()}


@dataclass
class Check:
    check_id: str
    name: str
    service_id: str = ""
    service_name: str = ""
    status: str = "critical"
    output: str = ""
    notes: str = ""
    ttl_s: float = 0.0
    http: str = ""
    interval_s: float = 10.0
    timeout_s: float = 10.0
    updated: float = field(default_factory=time.monotonic)

    def as_json(self) -> dict[str, Any]:
        return {"Node": NODE, "CheckID": self.check_id, "Name": self.name, "Status": self.status,
                "Notes": self.notes, "Output": self.output, "ServiceID": self.service_id,
                "ServiceName": self.service_name, "Type": "ttl" if self.ttl_s else ("http" if self.http else "")}


@dataclass
class Service:
    service_id: str
    name: str
    address: str = ""
    port: int = 0
    tags: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    index: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"ID": self.service_id, "Service": self.name, "Tags": list(self.tags), "Meta": dict(self.meta),
                "Address": self.address, "Port": self.port, "CreateIndex": self.index, "ModifyIndex": self.index}


@dataclass
class Session:
    session_id: str
    name: str = ""
    ttl_s: float = 0.0
    behavior: str = "release"
    lock_delay_s: float = 15.0
    checks: list[str] = field(default_factory=lambda: ["serfHealth"])
    expires: float = 0.0
    index: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"ID": self.session_id, "Name": self.name, "Node": NODE, "Checks": list(self.checks),
                "LockDelay": int(self.lock_delay_s * 1e9), "Behavior": self.behavior,
                "TTL": f"{self.ttl_s:g}s" if self.ttl_s else "", "CreateIndex": self.index,
                "ModifyIndex": self.index}


@dataclass
class Entry:
    key: str
    value: bytes | None
    flags: int = 0
    create_index: int = 0
    modify_index: int = 0
    lock_index: int = 0
    session: str = ""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "Key": self.key, "Flags": self.flags, "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index, "LockIndex": self.lock_index,
            "Value": base64.b64encode(self.value).decode() if self.value is not None else None,
        }
        if self.session:
            out["Session"] = self.session
        return out


class ConsulStandin:
    """The stand-in agent; ``start()`` serves it on ``host``:``port`` from a background thread."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        self.index = 1
        self.services: dict[str, Service] = {}
        self.checks: dict[str, Check] = {}
        self.sessions: dict[str, Session] = {}
        self.kv: dict[str, Entry] = {}
        self.lock_delays: dict[str, float] = {}  # key -> monotonic time until which acquire fails
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None
        self._http_session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ConsulStandin:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(started))
            except BaseException as exc:  # surfaced to start()
                failure.append(exc)
                started.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="consul-standin", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the Consul stand-in did not start")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` in the stand-in's thread (state is only touched there)."""
        assert self._loop is not None

        async def go() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(go(), self._loop).result(10)

    def snapshot(self) -> dict[str, Any]:
        """Services and check states, read safely from another thread."""
        return self.call(lambda: {
            "services": {sid: s.as_json() for sid, s in self.services.items()},
            "checks": {cid: c.as_json() for cid, c in self.checks.items()},
            "kv": {k: e.as_json() for k, e in self.kv.items()},
            "sessions": {sid: s.as_json() for sid, s in self.sessions.items()},
        })

    async def _serve(self, started: threading.Event) -> None:
        self._changed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._http_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        app = self._app()
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ticker = asyncio.create_task(self._tick())
        started.set()
        try:
            await self._stopped.wait()
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            await self._runner.cleanup()
            await self._http_session.close()

    # ------------------------------------------------------------------ state changes
    def _bump(self) -> int:
        self.index += 1
        # Wake every blocking query: they wait on the event that was current when they began.
        assert self._changed is not None
        self._changed.set()
        self._changed = asyncio.Event()
        return self.index

    def _set_status(self, check: Check, status: str, output: str) -> None:
        check.updated = time.monotonic()
        if (check.status, check.output) != (status, output):
            check.status, check.output = status, output
            self._bump()
            if status == "critical":
                self._invalidate_sessions_on(check.check_id)

    async def _tick(self) -> None:
        """TTL expiry, HTTP polling and session TTLs, ten times a second."""
        polling: dict[str, asyncio.Task[None]] = {}
        next_poll: dict[str, float] = {}
        try:
            while True:
                now = time.monotonic()
                for check in list(self.checks.values()):
                    if check.ttl_s and check.status != "critical" and now - check.updated > check.ttl_s:
                        self._set_status(check, "critical", "TTL expired")
                    if check.http and now >= next_poll.get(check.check_id, 0) and (
                            check.check_id not in polling or polling[check.check_id].done()):
                        next_poll[check.check_id] = now + check.interval_s
                        polling[check.check_id] = asyncio.create_task(self._poll(check))
                for session in list(self.sessions.values()):
                    if session.ttl_s and now > session.expires:
                        self._destroy_session(session.session_id)
                await asyncio.sleep(0.1)
        finally:
            for task in polling.values():
                task.cancel()
            await asyncio.gather(*polling.values(), return_exceptions=True)

    async def _poll(self, check: Check) -> None:
        assert self._http_session is not None
        try:
            async with self._http_session.get(check.http, timeout=aiohttp.ClientTimeout(total=check.timeout_s)) as r:
                body = (await r.text())[:200]
                status = "passing" if 200 <= r.status < 300 else "warning" if r.status == 429 else "critical"
                output = f"HTTP GET {check.http}: {r.status} Output: {body}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            status, output = "critical", f"HTTP GET {check.http}: {type(exc).__name__}"
        if self.checks.get(check.check_id) is check:
            self._set_status(check, status, output)

    def _invalidate_sessions_on(self, check_id: str) -> None:
        for session in list(self.sessions.values()):
            if check_id in session.checks:
                self._destroy_session(session.session_id)

    def _destroy_session(self, session_id: str) -> bool:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        for key, entry in list(self.kv.items()):
            if entry.session == session_id:
                # An invalidated (not released) lock is held back for the lock-delay.
                self.lock_delays[key] = time.monotonic() + session.lock_delay_s
                if session.behavior == "delete":
                    del self.kv[key]
                else:
                    entry.session = ""
                    entry.modify_index = self.index + 1
        self._bump()
        return True

    async def _block(self, request: web.Request) -> None:
        """Blocking query: wait until the index passes ``?index=`` or ``?wait=`` (default 5m) runs out."""
        if "index" not in request.query:
            return
        try:
            wanted = int(request.query["index"])
            wait_s = min(parse_duration(request.query.get("wait", "5m")), 600.0)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        # Consul adds up to wait/16 of jitter; a stand-in need not.
        deadline = time.monotonic() + wait_s
        while self.index <= wanted:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            assert self._changed is not None
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                break

    def _indexed(self, body: Any, status: int = 200) -> web.Response:
        return web.json_response(body, status=status, headers={"X-Consul-Index": str(self.index),
                                                                "X-Consul-KnownLeader": "true"})

    # ------------------------------------------------------------------ routes
    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        r = app.router
        r.add_put("/v1/agent/service/register", self.service_register)
        r.add_put("/v1/agent/service/deregister/{id}", self.service_deregister)
        r.add_put("/v1/agent/service/maintenance/{id}", self.service_maintenance)
        r.add_put(r"/v1/agent/check/{status:pass|warn|fail}/{id}", self.check_update)
        r.add_get("/v1/agent/services", self.agent_services)
        r.add_get("/v1/agent/checks", self.agent_checks)
        r.add_get("/v1/agent/self", self.agent_self)
        r.add_put("/v1/agent/maintenance", self.node_maintenance)
        r.add_get("/v1/agent/health/service/name/{name}", self.agent_health_by_name)
        r.add_get("/v1/agent/health/service/id/{id}", self.agent_health_by_id)
        r.add_get("/v1/health/service/{name}", self.health_service)
        r.add_get("/v1/catalog/services", self.catalog_services)
        r.add_get("/v1/catalog/service/{name}", self.catalog_service)
        r.add_get("/v1/kv/{key:.*}", self.kv_get)
        r.add_put("/v1/kv/{key:.*}", self.kv_put)
        r.add_delete("/v1/kv/{key:.*}", self.kv_delete)
        r.add_put("/v1/session/create", self.session_create)
        r.add_put("/v1/session/destroy/{id}", self.session_destroy)
        r.add_put("/v1/session/renew/{id}", self.session_renew)
        r.add_get("/v1/session/info/{id}", self.session_info)
        r.add_get("/v1/session/list", self.session_list)
        r.add_get("/v1/status/leader", self.status_leader)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        return await handler(request)

    # agent ---------------------------------------------------------------
    async def service_register(self, request: web.Request) -> web.Response:
        try:
            payload = _lower(await request.json())
            name = payload["name"]
        except (ValueError, KeyError):
            raise web.HTTPBadRequest(text="Request decode failed: a service needs a Name") from None
        service_id = payload.get("id") or name
        index = self._bump()
        self.services[service_id] = Service(
            service_id, name, payload.get("address", ""), int(payload.get("port", 0)),
            list(payload.get("tags") or []), dict(payload.get("meta") or {}), index)
        specs = list(payload.get("checks") or [])
        if payload.get("check"):
            specs.insert(0, payload["check"])
        # Re-registering replaces the service's checks (replace-existing-checks is the usual intent).
        for cid in [cid for cid, c in self.checks.items()
                    if c.service_id == service_id and not cid.startswith(SERVICE_MAINTENANCE)]:
            del self.checks[cid]
        for n, raw in enumerate(specs, start=1):
            spec = _lower(raw)
            check_id = spec.get("checkid") or spec.get("id") or (
                f"service:{service_id}" if len(specs) == 1 else f"service:{service_id}:{n}")
            try:
                check = Check(check_id, spec.get("name") or f"Service '{name}' check", service_id, name,
                              status=spec.get("status") or "critical", notes=spec.get("notes", ""),
                              ttl_s=parse_duration(spec["ttl"]) if spec.get("ttl") else 0.0,
                              http=spec.get("http", ""),
                              interval_s=parse_duration(spec.get("interval", "10s")),
                              timeout_s=parse_duration(spec.get("timeout", "10s")))
            except ValueError as exc:
                raise web.HTTPBadRequest(text=f"Invalid check: {exc}") from None
            if not check.ttl_s and not check.http:
                raise web.HTTPBadRequest(text="Invalid check: stand-in supports TTL and HTTP checks")
            self.checks[check_id] = check
        return web.Response()

    async def service_deregister(self, request: web.Request) -> web.Response:
        service_id = request.match_info["id"]
        if service_id not in self.services:
            raise web.HTTPNotFound(text=f'Unknown service ID "{service_id}"')
        del self.services[service_id]
        for cid in [cid for cid, c in self.checks.items() if c.service_id == service_id]:
            del self.checks[cid]
            self._invalidate_sessions_on(cid)
        self._bump()
        return web.Response()

    async def service_maintenance(self, request: web.Request) -> web.Response:
        service_id = request.match_info["id"]
        if service_id not in self.services:
            raise web.HTTPNotFound(text=f'Unknown service ID "{service_id}"')
        enable = request.query.get("enable", "").lower()
        if enable not in ("true", "false", "1", "0"):
            raise web.HTTPBadRequest(text="Missing value for enable")
        check_id = f"{SERVICE_MAINTENANCE}{service_id}"
        if enable in ("true", "1"):
            service = self.services[service_id]
            reason = request.query.get("reason") or "Maintenance mode is enabled for this service, but no reason was provided. This is a default message."
            self.checks[check_id] = Check(check_id, "Service Maintenance Mode", service_id, service.name,
                                          status="critical", notes=reason)
            self._invalidate_sessions_on(check_id)
        else:
            self.checks.pop(check_id, None)
        self._bump()
        return web.Response()

    async def check_update(self, request: web.Request) -> web.Response:
        check = self.checks.get(request.match_info["id"])
        if check is None or not check.ttl_s:
            raise web.HTTPNotFound(text=f'CheckID "{request.match_info["id"]}" does not have associated TTL')
        status = {"pass": "passing", "warn": "warning", "fail": "critical"}[request.match_info["status"]]
        self._set_status(check, status, request.query.get("note", ""))
        return web.Response()

    async def agent_services(self, request: web.Request) -> web.Response:
        return web.json_response({sid: s.as_json() for sid, s in self.services.items()})

    async def agent_checks(self, request: web.Request) -> web.Response:
        return web.json_response({cid: c.as_json() for cid, c in self.checks.items()})

    async def agent_self(self, request: web.Request) -> web.Response:
        return web.json_response({"Config": {"NodeName": NODE, "Datacenter": "dc1"},
                                  "Member": {"Name": NODE, "Addr": NODE_ADDRESS}})

    async def node_maintenance(self, request: web.Request) -> web.Response:
        enable = request.query.get("enable", "").lower()
        if enable not in ("true", "false", "1", "0"):
            raise web.HTTPBadRequest(text="Missing value for enable")
        if enable in ("true", "1"):
            reason = request.query.get("reason") or "Maintenance mode is enabled for this node, but no reason was provided. This is a default message."
            self.checks[NODE_MAINTENANCE] = Check(NODE_MAINTENANCE, "Node Maintenance Mode", status="critical",
                                                  notes=reason)
            self._invalidate_sessions_on(NODE_MAINTENANCE)
        else:
            self.checks.pop(NODE_MAINTENANCE, None)
        self._bump()
        return web.Response()

    # agent health ----------------------------------------------------------
    def _service_checks(self, service_id: str) -> list[dict[str, Any]]:
        # The agent aggregates the instance's own checks and the node's (node maintenance included).
        return [c.as_json() for c in self.checks.values() if c.service_id in (service_id, "")]

    @staticmethod
    def _aggregate(checks: list[dict[str, Any]]) -> str:
        """Consul's AggregatedStatus: maintenance wins, then critical, then warning, else passing."""
        ids = [c["CheckID"] for c in checks]
        if any(cid == NODE_MAINTENANCE or cid.startswith(SERVICE_MAINTENANCE) for cid in ids):
            return "maintenance"
        statuses = {c["Status"] for c in checks}
        for status in ("critical", "warning"):
            if status in statuses:
                return status
        return "passing"

    def _health_info(self, service: Service) -> dict[str, Any]:
        checks = self._service_checks(service.service_id)
        return {"AggregatedStatus": self._aggregate(checks), "Service": service.as_json(), "Checks": checks}

    @staticmethod
    def _text_wanted(request: web.Request) -> bool:
        return request.query.get("format") == "text"

    async def agent_health_by_id(self, request: web.Request) -> web.Response:
        service_id = request.match_info["id"]
        service = self.services.get(service_id)
        if service is None:
            if self._text_wanted(request):
                return web.Response(status=404, text=f"ServiceId {service_id} not found")
            return web.json_response(None, status=404)
        info = self._health_info(service)
        code = AGGREGATED_HTTP[info["AggregatedStatus"]]
        if self._text_wanted(request):
            return web.Response(status=code, text=info["AggregatedStatus"])
        return web.json_response(info, status=code)

    async def agent_health_by_name(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        infos = [self._health_info(s) for s in self.services.values() if s.name == name]
        if not infos:
            if self._text_wanted(request):
                return web.Response(status=404, text=f"ServiceName {name} Not Found")
            return web.json_response([], status=404)
        # Every instance of the name on this agent: the worst of them decides the code.
        worst = max(infos, key=lambda i: (AGGREGATED_HTTP[i["AggregatedStatus"]],
                                          i["AggregatedStatus"] == "maintenance"))
        code = AGGREGATED_HTTP[worst["AggregatedStatus"]]
        if self._text_wanted(request):
            return web.Response(status=code, text=worst["AggregatedStatus"])
        return web.json_response(infos, status=code)

    # health and catalog ----------------------------------------------------
    def _node(self) -> dict[str, Any]:
        return {"Node": NODE, "Address": NODE_ADDRESS, "Datacenter": "dc1", "Meta": {}}

    def _entries(self, name: str, tags: list[str]) -> list[Service]:
        return [s for s in self.services.values()
                if s.name == name and all(t in s.tags for t in tags)]

    async def health_service(self, request: web.Request) -> web.Response:
        await self._block(request)
        name = request.match_info["name"]
        passing_only = "passing" in request.query and request.query["passing"].lower() not in ("0", "false")
        out = []
        serf = {"Node": NODE, "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing",
                "Notes": "", "Output": "Agent alive and reachable", "ServiceID": "", "ServiceName": ""}
        for service in self._entries(name, request.query.getall("tag", [])):
            # Node checks (node maintenance) count for every service of the node, as in Consul.
            checks = [serf] + [c.as_json() for c in self.checks.values() if c.service_id in (service.service_id, "")]
            if passing_only and any(c["Status"] != "passing" for c in checks):
                continue
            out.append({"Node": self._node(), "Service": service.as_json(), "Checks": checks})
        return self._indexed(out)

    async def catalog_services(self, request: web.Request) -> web.Response:
        await self._block(request)
        out: dict[str, list[str]] = {}
        for service in self.services.values():
            tags = out.setdefault(service.name, [])
            tags.extend(t for t in service.tags if t not in tags)
        return self._indexed(out)

    async def catalog_service(self, request: web.Request) -> web.Response:
        await self._block(request)
        out = [{"Node": NODE, "Address": NODE_ADDRESS, "Datacenter": "dc1", "ServiceID": s.service_id,
                "ServiceName": s.name, "ServiceAddress": s.address, "ServicePort": s.port,
                "ServiceTags": list(s.tags), "ServiceMeta": dict(s.meta)}
               for s in self._entries(request.match_info["name"], request.query.getall("tag", []))]
        return self._indexed(out)

    # KV --------------------------------------------------------------------
    async def kv_get(self, request: web.Request) -> web.StreamResponse:
        await self._block(request)
        key = request.match_info["key"]
        q = request.query
        if "keys" in q:
            return self._indexed(sorted(k for k in self.kv if k.startswith(key)))
        if "recurse" in q:
            found = [self.kv[k].as_json() for k in sorted(self.kv) if k.startswith(key)]
        else:
            found = [self.kv[key].as_json()] if key in self.kv else []
        if not found:
            return web.Response(status=404, headers={"X-Consul-Index": str(self.index)})
        if "raw" in q:
            return web.Response(body=self.kv[key].value or b"", headers={"X-Consul-Index": str(self.index)})
        return self._indexed(found)

    async def kv_put(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        q = request.query
        value = await request.read()
        entry = self.kv.get(key)
        if "cas" in q:
            cas = int(q["cas"])
            if (cas == 0 and entry is not None) or (cas != 0 and (entry is None or entry.modify_index != cas)):
                return web.json_response(False)
        flags = int(q.get("flags", entry.flags if entry else 0))
        if "acquire" in q:
            session = q["acquire"]
            if session not in self.sessions:
                raise web.HTTPInternalServerError(text=f"invalid session \"{session}\"")
            if entry is not None and entry.session and entry.session != session:
                return web.json_response(False)
            if time.monotonic() < self.lock_delays.get(key, 0):
                return web.json_response(False)
            index = self._bump()
            if entry is None:
                entry = self.kv[key] = Entry(key, value, flags, index, index)
            else:
                entry.value, entry.flags, entry.modify_index = value, flags, index
            if entry.session != session:
                entry.lock_index += 1
                entry.session = session
            return web.json_response(True)
        if "release" in q:
            if entry is None or entry.session != q["release"]:
                return web.json_response(False)
            index = self._bump()
            entry.value, entry.flags, entry.modify_index, entry.session = value, flags, index, ""
            # A release by its holder is voluntary: no lock-delay (Consul docs, sessions).
            self.lock_delays.pop(key, None)
            return web.json_response(True)
        index = self._bump()
        if entry is None:
            self.kv[key] = Entry(key, value, flags, index, index)
        else:
            entry.value, entry.flags, entry.modify_index = value, flags, index
        return web.json_response(True)

    async def kv_delete(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        q = request.query
        if "cas" in q:
            entry = self.kv.get(key)
            if entry is None or entry.modify_index != int(q["cas"]):
                return web.json_response(False)
        for k in [k for k in self.kv if (k.startswith(key) if "recurse" in q else k == key)]:
            del self.kv[k]
        self._bump()
        return web.json_response(True)

    # sessions --------------------------------------------------------------
    async def session_create(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            payload = _lower(json.loads(raw)) if raw.strip() else {}
            ttl_s = parse_duration(payload["ttl"]) if payload.get("ttl") else 0.0
            lock_delay_s = parse_duration(payload.get("lockdelay", "15s"))
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"Request decode failed: {exc}") from None
        if ttl_s and not 10 <= ttl_s <= 86400:
            # The same bounds Consul enforces (session_ttl_min defaults to 10s).
            raise web.HTTPBadRequest(text=f"Invalid Session TTL '{ttl_s}s', must be between [10s=24h0m0s]")
        checks = list(payload.get("checks", ["serfHealth"]))
        for check_id in checks:
            if check_id != "serfHealth" and check_id not in self.checks:
                raise web.HTTPInternalServerError(text=f"Missing check '{check_id}' registration")
            if check_id != "serfHealth" and self.checks[check_id].status == "critical":
                raise web.HTTPInternalServerError(text=f"Check '{check_id}' is in critical state")
        session = Session(str(uuid.uuid4()), payload.get("name", ""), ttl_s, payload.get("behavior", "release"),
                          lock_delay_s, checks, time.monotonic() + ttl_s * 2, self._bump())
        self.sessions[session.session_id] = session
        return web.json_response({"ID": session.session_id})

    async def session_destroy(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        if session is not None:
            # An explicit destroy still applies the lock-delay to held locks (Consul docs, sessions).
            self._destroy_session(session.session_id)
        return web.json_response(True)

    async def session_renew(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            raise web.HTTPNotFound(text=f"Session id '{request.match_info['id']}' not found")
        # Consul invalidates after up to twice the TTL; the stand-in uses the same grace.
        session.expires = time.monotonic() + session.ttl_s * 2
        return web.json_response([session.as_json()])

    async def session_info(self, request: web.Request) -> web.Response:
        await self._block(request)
        session = self.sessions.get(request.match_info["id"])
        return self._indexed([session.as_json()] if session else [])

    async def session_list(self, request: web.Request) -> web.Response:
        await self._block(request)
        return self._indexed([s.as_json() for s in self.sessions.values()])

    async def status_leader(self, request: web.Request) -> web.Response:
        return web.json_response(f"{NODE_ADDRESS}:8300")


def main() -> None:
    """``python consul_standin.py --host H --port P``: serve in the foreground until SIGTERM (tests/fleet)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500)
    args = parser.parse_args()
    standin = ConsulStandin(args.port, args.host).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"consul stand-in on {standin.address}", flush=True)
    done.wait()
    standin.stop()


if __name__ == "__main__":
    main()
