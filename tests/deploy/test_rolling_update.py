"""rolling-update.yml run for real against this host: a real edge registered in the Consul
stand-in (tests/control/consul_standin.py: no Consul agent can be installed here), drained with the
real `streamgate drain`, converged, gated on /health, undrained; and a failing gate that stops the
rollout at the canary, leaving it drained."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from deploy_support import ANSIBLE_DIR, REPO, tool, tool_env
from support import wait_until

sys.path.append(str(REPO / "tests" / "control"))
from consul_standin import ConsulStandin  # noqa: E402

NODE = "rolling-node"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def consul() -> Iterator[ConsulStandin]:
    standin = ConsulStandin().start()
    yield standin
    standin.stop()


@pytest.fixture
def edge(consul: ConsulStandin, tmp_path: Path) -> Iterator[int]:
    """A real edge on a free port, registered in the stand-in as this node's."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMGATE", "NOTIFY_SOCKET", "WATCHDOG"))}
    env.update(STREAMGATE_CONFIG=str(REPO / "config.yaml"), STREAMGATE_DATA_DIR=str(tmp_path / "edge-data"),
               AUTH_REQUIRED="false", STREAMGATE__SERVER__WORKERS="1", REGISTRY_TYPE="consul",
               CONSUL_ADDRESS=consul.address, STREAMGATE__DEPLOYMENT__NODE_NAME=NODE,
               STREAMGATE__REGISTRY__CHECK_INTERVAL="1s")
    proc = subprocess.Popen([sys.executable, "-m", "streamgate", "edge", "--port", str(port)], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc.poll() is not None or any(
            s["Service"] == "streamgate-edge" for s in consul.snapshot()["services"].values()),
            timeout=60, what="the edge to register in Consul")
        assert proc.poll() is None, "the edge exited"
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def maintenance(consul: ConsulStandin) -> list[str]:
    return [cid for cid in consul.snapshot()["checks"] if cid.startswith("_service_maintenance:")]


def roll(tmp_path: Path, consul: ConsulStandin, ports: list[int], hosts: list[str]) -> subprocess.CompletedProcess[str]:
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(
        {"all": {"children": {"edge": {"hosts": {h: local for h in hosts}}}}}))
    etc = tmp_path / "etc"
    # The host runs a release already (site.yml converged it): drain reads its config.yaml.
    (etc / "streamgate").mkdir(parents=True, exist_ok=True)
    (etc / "streamgate/config.yaml").write_text(yaml.safe_dump({
        "deployment": {"mode": "fleet", "node_name": NODE}, "cache": {"redis_url": "redis://localhost:6379/0"},
        "registry": {"type": "consul", "consul_address": consul.address}}))
    (tmp_path / "vars.yml").write_text(yaml.safe_dump({
        # This venv stands for the installed release; every path the roles write is under tmp_path.
        "streamgate_common_install": False, "streamgate_common_venv_dir": sys.prefix,
        "streamgate_common_install_system_packages": False,
        "streamgate_common_install_dir": str(tmp_path / "opt"),
        "streamgate_common_config_dir": str(etc / "streamgate"),
        "streamgate_common_unit_dir": str(etc / "systemd/system"),
        "streamgate_common_data_dir": str(tmp_path / "data"),
        "streamgate_common_create_user": False, "streamgate_common_manage_services": False,
        "streamgate_common_consul_address": consul.address,
        "streamgate_common_config": {"deployment": {"node_name": NODE}},
        "streamgate_edge_ports": ports,
        "streamgate_rolling_drain_seconds": 0,
        # This edge runs alone (no broker, so never ready): the gate checks its liveness.
        "streamgate_rolling_edge_health_path": "/health",
        "streamgate_rolling_health_retries": 2, "streamgate_rolling_health_delay": 1,
    }))
    return subprocess.run([tool("ansible-playbook"), "-i", str(tmp_path / "hosts.yml"),
                           "-e", f"@{tmp_path / 'vars.yml'}", "rolling-update.yml"],
                          cwd=ANSIBLE_DIR, env=tool_env(), capture_output=True, text=True, timeout=240)


def test_rolling_update_drains_converges_gates_and_undrains(consul: ConsulStandin, edge: int,
                                                            tmp_path: Path) -> None:
    result = roll(tmp_path, consul, [edge], ["edge-a"])
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    out = result.stdout
    sid = f"streamgate-edge-{NODE}-{edge}"
    puts = [p for m, p in consul.requests if m == "PUT" and p == f"/v1/agent/service/maintenance/{sid}"]
    assert len(puts) == 2, consul.requests  # drain, then undrain
    assert out.index("Drain this host through streamgate drain") < out.index("Converge the edges") \
        < out.index("Check that every edge on this host is ready") \
        < out.index("Undrain this host through streamgate undrain") \
        < out.index("Wait until Consul reports this host's services serving again")
    # No video is published here: the playback gate says it is skipped rather than passing silently.
    assert "SKIPPED the edge playback gate on edge-a: no video is published yet" in out
    assert maintenance(consul) == []
    unit = (tmp_path / "etc/systemd/system/streamgate-edge@.service").read_text()
    assert f"ExecStart={sys.prefix}/bin/streamgate edge --port %i" in unit


def test_a_failing_health_gate_stops_the_rollout_at_the_canary(consul: ConsulStandin, edge: int,
                                                               tmp_path: Path) -> None:
    dead = free_port()  # the "new release" does not answer on this port
    result = roll(tmp_path, consul, [dead], ["edge-a", "edge-b"])
    assert result.returncode != 0
    out = result.stdout
    assert "failed: [edge-a]" in out and "http://127.0.0.1:" + str(dead) + "/health" in out, out[-4000:]
    assert "edge-b" not in out.split("PLAY RECAP")[0], "the rollout went on past a failed canary"
    # The failed host stays drained for an operator to look at.
    assert maintenance(consul) == [f"_service_maintenance:streamgate-edge-{NODE}-{edge}"]
