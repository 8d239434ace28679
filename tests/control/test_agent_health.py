"""The agent health endpoints of the Consul stand-in answer with Consul's documented codes.

``/v1/agent/health/service/{name,id}/...`` is what the Ansible gates read: 200 passing, 429 warning
(a standby broker), 503 critical or maintenance (a drained host), 404 for a service the agent
does not know.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from consul_standin import ConsulStandin


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _put(url: str, body: Any = None) -> None:
    data = json.dumps(body).encode() if body is not None else b""
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method="PUT"), timeout=5):
        pass


def _register(agent: ConsulStandin, service_id: str, name: str = "streamgate-broker") -> None:
    _put(f"{agent.address}/v1/agent/service/register",
         {"ID": service_id, "Name": name, "Port": 5555, "Check": {"TTL": "60s"}})


def test_aggregated_status_follows_the_checks(standin: ConsulStandin) -> None:
    a = standin.address
    _register(standin, "broker-a")
    # A check starts critical until its first refresh.
    code, body = _get(f"{a}/v1/agent/health/service/id/broker-a")
    assert code == 503 and json.loads(body)["AggregatedStatus"] == "critical"

    _put(f"{a}/v1/agent/check/pass/service:broker-a")
    code, body = _get(f"{a}/v1/agent/health/service/id/broker-a")
    info = json.loads(body)
    assert code == 200 and info["AggregatedStatus"] == "passing"
    assert info["Service"]["ID"] == "broker-a" and info["Checks"][0]["CheckID"] == "service:broker-a"

    # A standby broker reports warning: Consul answers 429, not 200.
    _put(f"{a}/v1/agent/check/warn/service:broker-a?note=standby")
    assert _get(f"{a}/v1/agent/health/service/id/broker-a?format=text") == (429, "warning")
    assert _get(f"{a}/v1/agent/health/service/name/streamgate-broker?format=text") == (429, "warning")


def test_by_name_reports_the_worst_instance(standin: ConsulStandin) -> None:
    a = standin.address
    _register(standin, "edge-1", "streamgate-edge")
    _register(standin, "edge-2", "streamgate-edge")
    _put(f"{a}/v1/agent/check/pass/service:edge-1")
    _put(f"{a}/v1/agent/check/pass/service:edge-2")
    code, body = _get(f"{a}/v1/agent/health/service/name/streamgate-edge")
    assert code == 200
    assert sorted(i["Service"]["ID"] for i in json.loads(body)) == ["edge-1", "edge-2"]

    _put(f"{a}/v1/agent/check/fail/service:edge-2")
    code, body = _get(f"{a}/v1/agent/health/service/name/streamgate-edge")
    statuses = {i["Service"]["ID"]: i["AggregatedStatus"] for i in json.loads(body)}
    assert code == 503 and statuses == {"edge-1": "passing", "edge-2": "critical"}


def test_maintenance_is_503_until_lifted(standin: ConsulStandin) -> None:
    a = standin.address
    _register(standin, "farm-1", "streamgate-farm")
    _put(f"{a}/v1/agent/check/pass/service:farm-1")

    _put(f"{a}/v1/agent/service/maintenance/farm-1?enable=true&reason=rolling")
    assert _get(f"{a}/v1/agent/health/service/id/farm-1?format=text") == (503, "maintenance")
    _put(f"{a}/v1/agent/service/maintenance/farm-1?enable=false")
    assert _get(f"{a}/v1/agent/health/service/id/farm-1?format=text") == (200, "passing")

    # Node maintenance drains every service of the node, in the health API too.
    _put(f"{a}/v1/agent/maintenance?enable=true&reason=rolling")
    assert _get(f"{a}/v1/agent/health/service/name/streamgate-farm?format=text") == (503, "maintenance")
    assert json.loads(_get(f"{a}/v1/health/service/streamgate-farm?passing=1")[1]) == []
    _put(f"{a}/v1/agent/maintenance?enable=false")
    assert _get(f"{a}/v1/agent/health/service/name/streamgate-farm?format=text") == (200, "passing")


def test_unknown_services_are_404(standin: ConsulStandin) -> None:
    a = standin.address
    assert _get(f"{a}/v1/agent/health/service/id/nope?format=text") == (404, "ServiceId nope not found")
    assert _get(f"{a}/v1/agent/health/service/name/nope?format=text") == (404, "ServiceName nope Not Found")


def test_listens_on_a_given_address() -> None:
    # Any loopback address stands for a fleet bridge here; the fleet harness passes the bridge's.
    agent = ConsulStandin(host="127.0.0.7").start()
    try:
        assert agent.address.startswith("http://127.0.0.7:")
        assert _get(f"{agent.address}/v1/status/leader")[0] == 200
    finally:
        agent.stop()
