"""The rolling update's gates mean "serving", run for real with ansible-playbook.

tasks/health-gate.yml (host still drained) and tasks/undrain.yml (maintenance lifted) against the
Consul stand-in's agent health endpoints: a standby broker (warning, Consul's 429) is healthy, a
farm must pass, a drained host passes the pre-undrain gate on its own checks and the post-undrain
gate only once Consul's full answer says serving, other nodes' instances do not count; and the edge
gate plays a real video (master playlist, media playlist, init section, first segment) through a
real edge, or says plainly that it skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import ANSIBLE_DIR, REPO, tool, tool_env

sys.path.append(str(REPO / "tests" / "control"))
from consul_standin import ConsulStandin  # noqa: E402

NODE = "gate-node"


@pytest.fixture
def consul() -> Iterator[ConsulStandin]:
    standin = ConsulStandin().start()
    yield standin
    standin.stop()


def _put(agent: ConsulStandin, path: str, body: Any = None) -> None:
    data = json.dumps(body).encode() if body is not None else b""
    with urllib.request.urlopen(urllib.request.Request(agent.address + path, data=data, method="PUT"),
                                timeout=5):
        pass


def _register(agent: ConsulStandin, role: str, node: str, status: str) -> str:
    sid = f"streamgate-{role}-{node}"
    _put(agent, "/v1/agent/service/register", {
        "ID": sid, "Name": f"streamgate-{role}", "Port": 5555, "Meta": {"node": node, "role": role},
        "Check": {"TTL": "300s", "Status": status}})
    return sid


Gate = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def gate(tmp_path: Path, consul: ConsulStandin) -> Gate:
    """Run one of ansible/tasks/*.yml for a host of the given groups, with the playbook's variables."""

    def run(tasks: str, groups: list[str], **extra: Any) -> subprocess.CompletedProcess[str]:
        local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
        (tmp_path / "hosts.yml").write_text(yaml.safe_dump(
            {"all": {"children": {g: {"hosts": {"gated": local}} for g in groups}}}))
        (tmp_path / "play.yml").write_text(yaml.safe_dump([{
            "name": "Gate one host.", "hosts": "all", "gather_facts": False,
            "vars_files": [str(ANSIBLE_DIR / "roles/streamgate_common/defaults/main.yml"),
                           str(ANSIBLE_DIR / "vars/rolling-update.yml")],
            "tasks": [{"name": "Run the gate.", "ansible.builtin.include_tasks": str(ANSIBLE_DIR / "tasks" / tasks)}],
        }]))
        (tmp_path / "vars.yml").write_text(yaml.safe_dump({
            "streamgate_common_consul_address": consul.address, "streamgate_common_manage_services": False,
            "streamgate_common_config": {"deployment": {"node_name": NODE}},
            "streamgate_rolling_drain_method": "consul_api",
            "streamgate_rolling_health_retries": 3, "streamgate_rolling_health_delay": 1, **extra}))
        return subprocess.run([tool("ansible-playbook"), "-i", str(tmp_path / "hosts.yml"),
                               "-e", f"@{tmp_path / 'vars.yml'}", str(tmp_path / "play.yml")],
                              cwd=ANSIBLE_DIR, env=tool_env(), capture_output=True, text=True, timeout=240)

    return run


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    return result.stdout


def test_a_drained_standby_broker_passes_both_gates(consul: ConsulStandin, gate: Gate) -> None:
    _register(consul, "broker", NODE, "warning")  # a standby waiting for the broker lock
    _put(consul, "/v1/agent/maintenance?enable=true&reason=rolling")  # drained (node maintenance)
    try:
        urllib.request.urlopen(f"{consul.address}/v1/agent/health/service/name/streamgate-broker", timeout=5)
    except urllib.error.HTTPError as drained:
        drained.close()
        assert drained.code == 503
    else:
        raise AssertionError("a drained broker answered 2xx")

    _ok(gate("health-gate.yml", ["broker"]))
    out = _ok(gate("undrain.yml", ["broker"]))
    assert "Wait until Consul reports this host's services serving again" in out
    assert "_node_maintenance" not in consul.snapshot()["checks"]


def test_a_farm_must_pass_not_warn(consul: ConsulStandin, gate: Gate) -> None:
    sid = _register(consul, "farm", NODE, "warning")
    result = gate("health-gate.yml", ["farm"])
    assert result.returncode != 0
    assert "failed: [gated]" in result.stdout and "streamgate-farm" in result.stdout, result.stdout[-3000:]
    _put(consul, f"/v1/agent/check/pass/service:{sid}")
    _ok(gate("health-gate.yml", ["farm"]))


def test_only_this_nodes_instances_count(consul: ConsulStandin, gate: Gate) -> None:
    _register(consul, "farm", NODE, "passing")
    _register(consul, "farm", "another-node", "critical")  # another host's farm, e.g. mid-restart
    _ok(gate("health-gate.yml", ["farm"]))
    _ok(gate("undrain.yml", ["farm"]))


def test_the_post_undrain_gate_fails_while_consul_still_says_maintenance(consul: ConsulStandin,
                                                                          gate: Gate) -> None:
    sid = _register(consul, "farm", NODE, "passing")
    # Service maintenance that the node-level undrain does not lift (drained by other means).
    _put(consul, f"/v1/agent/service/maintenance/{sid}?enable=true&reason=held")
    _ok(gate("health-gate.yml", ["farm"]))  # its own check serves
    result = gate("undrain.yml", ["farm"])
    assert result.returncode != 0 and "serving again" in result.stdout, result.stdout[-3000:]


def test_a_host_not_registered_fails_the_gate(gate: Gate) -> None:
    result = gate("health-gate.yml", ["broker"])
    assert result.returncode != 0 and "streamgate-broker" in result.stdout


def test_the_edge_gate_plays_a_real_video_through_the_edge(run_platform: Callable[..., Any],
                                                           small_video: Path, gate: Gate) -> None:
    platform = run_platform()
    port = int(platform.url.rsplit(":", 1)[1])
    edge_vars = {"streamgate_edge_ports": [port], "streamgate_rolling_consul_services": []}

    skipped = _ok(gate("health-gate.yml", ["edge"], **edge_vars))
    assert "SKIPPED the edge playback gate on gated: no video is published yet" in skipped

    upload = subprocess.run([sys.executable, "-m", "streamgate", "upload", str(small_video), "--title", "canary",
                             "--server", platform.url], capture_output=True, text=True, timeout=110,
                            env=tool_env(STREAMGATE_CONFIG=str(REPO / "config.yaml")))
    assert upload.returncode == 0, upload.stdout + upload.stderr

    out = _ok(gate("health-gate.yml", ["edge"], **edge_vars))
    assert "SKIPPED" not in out
    for step in ("Fetch the canary's master playlist through this edge",
                 "Fetch the first media playlist the master lists through this edge",
                 "Fetch the rendition's init section and first segment through this edge"):
        assert step in out
    assert "init.mp4" in out and ".m4s" in out, out[-3000:]

    # A canary the edge cannot play stops the gate.
    result = gate("health-gate.yml", ["edge"], **edge_vars, streamgate_rolling_canary_video="nope")
    assert result.returncode != 0 and "master.m3u8" in result.stdout
