"""``streamgate run`` with REGISTRY_TYPE=consul: every role registered with a check, TTLs kept passing,
the fleet view and ``streamgate status`` over it, everything deregistered on SIGTERM."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

from agent_api import Agent, free_port
from support import wait_until

ROLES = ("broker", "farm", "edge", "control")


def _present_roles(agent: Agent) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    """Role -> its registered service, once every role is registered."""
    services = {s["Meta"].get("role"): s for s in agent.services().values()}
    return {r: services[r] for r in ROLES} if all(r in services for r in ROLES) else {}


def test_run_registers_every_role_and_deregisters_on_sigterm(run_platform, consul_agent: Agent) -> None:  # type: ignore[no-untyped-def]
    control_port = free_port()
    platform = run_platform(
        REGISTRY_TYPE="consul", CONSUL_ADDRESS=consul_agent.address,
        STREAMGATE__SERVER__CONTROL_PORT=str(control_port),
        STREAMGATE__REGISTRY__TTL="1s", STREAMGATE__REGISTRY__CHECK_INTERVAL="0.5s",
        STREAMGATE__REGISTRY__ADVERTISE_ADDRESS="127.0.0.1",
        STREAMGATE__CONTROL__REFRESH_INTERVAL="0.5s",
    )
    present = wait_until(lambda: _present_roles(consul_agent), timeout=60, what="every role registered")
    edge_port = int(platform.url.rsplit(":", 1)[1])
    assert present["edge"]["Port"] == edge_port and present["edge"]["Service"] == "streamgate-edge"
    assert present["control"]["Port"] == control_port
    for role, service in present.items():
        assert service["Meta"]["node"] and service["Meta"]["version"], service
        assert role in service["Tags"]
    checks = consul_agent.checks()
    expected_kind = {"edge": "http", "control": "http", "broker": "ttl", "farm": "ttl"}
    for role, service in present.items():
        check_id = f"service:{service['ID']}"
        assert check_id in checks, (role, checks)
        if consul_agent.standin is not None:
            assert checks[check_id]["Type"] == expected_kind[role]

    def all_passing() -> bool:
        checks = consul_agent.checks()
        return all(checks.get(f"service:{s['ID']}", {}).get("Status") == "passing" for s in present.values())

    wait_until(all_passing, timeout=30, what="every registered role passing")
    # TTL roles stay passing across several TTLs: the refreshes come from each role's loop.
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert all_passing(), consul_agent.checks()
        time.sleep(0.25)

    # Some playback traffic for the edge's counters (a missing video: 404, still counted).
    for _ in range(3):
        try:
            urllib.request.urlopen(f"{platform.url}/videos/none/master.m3u8", timeout=10).close()
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
            exc.close()
    # The fleet view lists the instances with their health.
    with urllib.request.urlopen(f"http://127.0.0.1:{control_port}/api/v1/fleet?refresh=1", timeout=10) as r:
        view = json.loads(r.read())
    by_role = {i["role"]: i for i in view["instances"]}
    assert view["registry"] == "consul"
    assert by_role["edge"]["status"] == "passing" and by_role["control"]["status"] == "passing"
    assert by_role["broker"]["status"] == "passing" and by_role["farm"]["status"] == "passing"
    assert [e["up"] for e in view["edges"]] == [True]
    assert view["edges"][0]["requests_total"] >= 3, view["edges"]
    # The broker's figures come from the farm's BrokerClient over the node's ipc:// socket.
    assert view["broker"]["up"] is True, view["broker"]
    assert view["scaling"]["farm_workers"] >= 1 and view["scaling"]["action"] in ("hold", "scale_up", "scale_down")
    with urllib.request.urlopen(f"http://127.0.0.1:{control_port}/api/v1/scaling", timeout=10) as r:
        scaling = json.loads(r.read())
    assert scaling["farm_workers"] == view["scaling"]["farm_workers"] and scaling["reason"]
    with urllib.request.urlopen(f"http://127.0.0.1:{control_port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert 'streamgate_fleet_instances{role="edge",status="passing"} 1.0' in metrics
    assert "streamgate_scaling_farm_workers" in metrics

    # streamgate status, JSON and tables, from the same control service.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(platform.data_dir)}
    out = subprocess.run([sys.executable, "-m", "streamgate", "status", "--json", "--url",
                          f"http://127.0.0.1:{control_port}"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert {i["role"] for i in json.loads(out.stdout)["instances"]} >= {"edge", "control"}
    out = subprocess.run([sys.executable, "-m", "streamgate", "status", "--url",
                          f"http://127.0.0.1:{control_port}"], capture_output=True, text=True, timeout=60,
                         env={**env, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "Instances (registry: consul)" in out.stdout and "streamgate-edge" in out.stdout

    assert platform.stop() == 0
    assert consul_agent.services() == {}, "every role deregisters on SIGTERM"


def test_a_copy_with_register_false_stays_out_of_consul(consul_agent: Agent, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """registry.register: false (what the edge's SO_REUSEPORT copies should set) serves unregistered."""
    import os
    import signal

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMGATE", "REGISTRY", "CONSUL"))}
    env.update({"REGISTRY_TYPE": "consul", "CONSUL_ADDRESS": consul_agent.address,
                "STREAMGATE__REGISTRY__REGISTER": "false", "STREAMGATE_DATA_DIR": str(tmp_path),
                "STREAMGATE__CONTROL__REFRESH_INTERVAL": "0.2s"})
    with subprocess.Popen([sys.executable, "-m", "streamgate", "control", "--port", str(port)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        try:
            def healthy() -> bool:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                        return r.status == 200
                except OSError:
                    return False

            wait_until(healthy, timeout=30, what="control /health")
            if consul_agent.standin is not None:
                # Several fleet refreshes (Consul reads made after ready, like a registration
                # would be) have happened, and no registration among the requests.
                requests = consul_agent.standin.requests
                wait_until(lambda: sum(1 for _, p in list(requests) if p == "/v1/catalog/services") >= 3,
                           timeout=30, what="three fleet refreshes")
                assert not [p for _, p in list(requests) if p.startswith("/v1/agent/service/register")]
            assert consul_agent.services() == {}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
    assert proc.returncode == 0
