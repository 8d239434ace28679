"""Two hosts come up with systemd as PID 1 and sshd, answer over SSH, and leave nothing behind."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Callable
from pathlib import Path

from consul_standin import ConsulStandin
from hosts import Fleet


def _traces(fleet: Fleet) -> list[str]:
    st = fleet.state
    found = [f"netns {ns}" for ns in [st.bridge_netns, *(h.netns for h in st.hosts)]
             if Path("/run/netns", ns).exists()]
    found += [f"link {st.controller_veth}"] if Path("/sys/class/net", st.controller_veth).exists() else []
    mounts = Path("/proc/self/mounts").read_text()
    found += [f"mount {h.state_dir}" for h in st.hosts if h.state_dir in mounts]
    found += [f"cgroup {cg}" for h in st.hosts for cg in h.cgroups if Path(cg).exists()]
    return found


def test_two_hosts_boot_systemd_and_answer_ssh(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(["alpha", "beta"])
    pids = [h.pid for h in fleet.state.hosts]
    for host in fleet.state.hosts:
        result = fleet.ssh(host.name, "systemctl is-system-running; cat /proc/1/comm; hostname; "
                                      "ip -4 -o addr show dev eth0")
        lines = result.stdout.split("\n")
        assert result.returncode == 0, result.stderr
        assert lines[0] == "running" and lines[1] == "systemd" and lines[2] == host.name
        assert f"{host.address}/24" in lines[3]
    # The hosts reach each other on the bridge (sshd of the other host answers its banner).
    probe = fleet.ssh("alpha", "exec 3<>/dev/tcp/beta/22 && head -c 7 <&3")
    assert probe.stdout == "SSH-2.0", probe.stderr
    # A unit started by the host's systemd is supervised there, in the host's own cgroup tree.
    started = fleet.ssh("beta", "systemd-run --unit=probe sleep 300 && systemctl is-active probe")
    assert started.stdout.strip() == "active", started.stderr

    # A service on the controller's bridge address is reachable from the hosts (the Consul stand-in).
    standin = ConsulStandin(host=fleet.controller_address).start()
    try:
        with urllib.request.urlopen(f"{standin.address}/v1/status/leader", timeout=5) as r:
            assert r.status == 200
        answer = fleet.ssh("alpha", f"curl -s -o /dev/null -w '%{{http_code}}' {standin.address}/v1/status/leader")
        assert answer.stdout == "200", answer.stderr
    finally:
        standin.stop()

    fleet.down()
    assert _traces(fleet) == []
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"nspawn {pid} still running"
    assert not any(Path(h.state_dir).exists() for h in fleet.state.hosts)
    assert os.path.exists(fleet.state_dir)  # the tmp dir itself stays for pytest to remove
