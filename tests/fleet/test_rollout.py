"""Ansible over SSH into two fleet hosts: site.yml installs release 1 from a wheel and the hosts'
systemd runs the units; rolling-update.yml then rolls release 2 over them, gates and all.

h1 runs the broker and an edge, h2 a farm and an edge. Consul is the stand-in and Redis a real
redis-server, both on the controller's bridge address (the consul role installs its files but runs
no agent: no registry ships a Consul binary). `make fleet-test` runs this; it prints how long each
playbook took.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from consul_standin import ConsulStandin
from release import DEPS_IN_HOST, build_wheel, deps_farm, site_packages

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.fleet, pytest.mark.timeout(1500)]
GROUPS = {"h1": ["broker", "edge"], "h2": ["farm", "edge"]}
EDGE_PORT = 8080
UNITS = {"h1": ["streamgate-broker.service", f"streamgate-edge@{EDGE_PORT}.service"],
         "h2": ["streamgate-farm.service", f"streamgate-edge@{EDGE_PORT}.service"]}


@pytest.fixture
def redis_on_bridge(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(address: str) -> str:
        port = 6390
        proc = subprocess.Popen(["redis-server", "--bind", address, "--port", str(port), "--save", "",
                                 "--appendonly", "no", "--protected-mode", "no", "--dir", str(tmp_path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 30
        while subprocess.run(["redis-cli", "-h", address, "-p", str(port), "ping"], capture_output=True,
                             text=True).stdout.strip() != "PONG":
            assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
            time.sleep(0.1)
        return f"redis://{address}:{port}/0"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(30)


def _playbook(fleet_dir: Path, inventory: Path, extra: dict[str, object], playbook: str,
              *more: str) -> tuple[subprocess.CompletedProcess[str], float]:
    (fleet_dir / f"{playbook}.vars.json").write_text(json.dumps(extra))
    env = {"PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(fleet_dir),
           "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_LOCAL_TEMP": str(fleet_dir / "ansible-tmp")}
    started = time.monotonic()
    result = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory),
                             "-e", f"@{fleet_dir / f'{playbook}.vars.json'}", playbook, *more],
                            cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=1200)
    (fleet_dir / f"{playbook}.log").write_text(result.stdout + result.stderr)
    return result, time.monotonic() - started


def _journals(fleet: object) -> str:
    """What the hosts' systemd says about the StreamGate units, for a failure's message."""
    return "".join(f"\n--- {host} ---\n" + fleet.ssh(  # type: ignore[attr-defined]
        host, "systemctl --no-pager status 'streamgate*' | tail -n 40; "
              "journalctl --no-pager -n 60 -u 'streamgate*'").stdout for host in GROUPS)


def test_site_then_rolling_update_over_ssh(make_fleet: Callable[..., object], tmp_path: Path,
                                           redis_on_bridge: Callable[[str], str]) -> None:
    wheels = tmp_path / "wheels"
    v1 = build_wheel("0.1.0", wheels, tmp_path)
    v2 = build_wheel("0.1.1", wheels, tmp_path)
    farm = deps_farm(tmp_path / "deps-farm")
    fleet = make_fleet(list(GROUPS), name="sgr", subnet="10.213.2",
                       binds=[(site_packages(), f"{DEPS_IN_HOST}/all"), (farm, f"{DEPS_IN_HOST}/site"),
                              (wheels, "/opt/releases")])
    consul = ConsulStandin(host=fleet.controller_address).start()
    try:
        redis_url = redis_on_bridge(fleet.controller_address)
        for host in GROUPS:
            # The venv the role installs into, its dependencies from the controller (see release.py).
            made = fleet.ssh(host, "python3 -m venv /opt/streamgate/venv && "
                                   f"echo {DEPS_IN_HOST}/site > $(ls -d /opt/streamgate/venv/lib/python3*/site-packages)/streamgate-deps.pth")
            assert made.returncode == 0, made.stderr
        stub = tmp_path / "consul-binary"
        stub.write_text("#!/bin/sh\n# no registry ships consul: the stand-in on the controller is the agent\necho consul\n")
        stub.chmod(0o755)

        ssh_args = f"-F {fleet.ssh_config}"
        inventory = tmp_path / "hosts.yml"
        children: dict[str, dict[str, dict[str, None]]] = {}
        for host, groups in GROUPS.items():
            for group in groups:
                children.setdefault(group, {"hosts": {}})["hosts"][host] = None
        inventory.write_text(yaml.safe_dump({"all": {
            "hosts": {h: {"ansible_ssh_common_args": ssh_args, "ansible_user": "root",
                          "ansible_python_interpreter": "/usr/bin/python3"} for h in GROUPS},
            "children": children}}))
        base = {
            "streamgate_common_pip_spec": f"/opt/releases/{v1.name}", "streamgate_common_version": "0.1.0",
            "streamgate_common_pip_extra_args": "--no-deps --no-index",
            "streamgate_common_install_system_packages": False,
            "streamgate_common_consul_address": consul.address, "streamgate_common_redis_url": redis_url,
            "streamgate_common_config": {"auth": {"required": False}, "registry": {"check_interval": 1}},
            "consul_binary_src": str(stub), "consul_manage_service": False,
            "streamgate_edge_ports": [EDGE_PORT],
            "streamgate_rolling_drain_seconds": 2,
        }
        site, site_s = _playbook(tmp_path, inventory, base, "site.yml")
        assert site.returncode == 0, site.stdout[-4000:] + site.stderr[-2000:] + _journals(fleet)
        for host in GROUPS:
            units = fleet.ssh(host, "systemctl is-active " + " ".join(UNITS[host]))
            assert units.stdout.split() == ["active"] * len(UNITS[host]), units.stdout + _journals(fleet)
            health = fleet.ssh(host, f"curl -s http://127.0.0.1:{EDGE_PORT}/health")
            assert json.loads(health.stdout)["version"] == "0.1.0", health.stdout

        rolled, roll_s = _playbook(tmp_path, inventory, {
            **base, "streamgate_common_pip_spec": f"/opt/releases/{v2.name}", "streamgate_common_version": "0.1.1",
        }, "rolling-update.yml")
        assert rolled.returncode == 0, rolled.stdout[-4000:] + rolled.stderr[-2000:] + _journals(fleet)
        for host in GROUPS:
            health = fleet.ssh(host, f"curl -s http://127.0.0.1:{EDGE_PORT}/health")
            assert json.loads(health.stdout)["version"] == "0.1.1", health.stdout
            pid1 = fleet.ssh(host, "cat /proc/1/comm; systemctl is-active " + " ".join(UNITS[host]))
            assert pid1.stdout.split() == ["systemd"] + ["active"] * len(UNITS[host]), pid1.stdout
        out = rolled.stdout
        # No video can be published across hosts before fleet storage: the playback gate says so.
        # (h1 is gated twice: with the brokers, then with the edges.)
        assert out.count("SKIPPED the edge playback gate") >= len(GROUPS), out[-3000:]
        assert "Wait until Consul reports this host's services serving again" in out
        maintenance = [c for c in consul.snapshot()["checks"] if "maintenance" in c]
        assert maintenance == [], maintenance
        print(f"\nfleet rollout: site.yml {site_s:.1f}s, rolling-update.yml {roll_s:.1f}s over {len(GROUPS)} hosts")
    finally:
        consul.stop()
