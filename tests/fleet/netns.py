"""Hosts as network namespaces on one bridge, for the fleet test (root only).

The bridge lives in a namespace of its own; every host is a namespace with one veth into it and a
private address of a /24 that exists only inside these namespaces; the test process gets a veth
into the bridge too (the only thing added to the root namespace) so it can reach every host.
Processes run in a host with ``ip netns exec``; ``teardown()`` stops them by PID and deletes every
namespace and veth it made, whatever state the test left them in.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


def netns_unavailable() -> str:
    """Why this machine cannot run the fleet test, or "" when it can."""
    if os.geteuid() != 0:
        return "the fleet test needs root (it creates network namespaces with `ip netns add`)"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) on PATH"
    probe = f"sgprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


def free_subnet() -> str:
    """A 10.231.N.0/24 the root namespace has no route for (another run's test veth holds its own)."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    for n in range(10, 250):
        if f"10.231.{n}." not in routes:
            return f"10.231.{n}"
    raise AssertionError("no free 10.231.N.0/24 for the fleet test")


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class Host:
    name: str
    netns: str
    address: str
    data_dir: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    @property
    def wrapper(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.netns)

    def spawn(self, label: str, argv: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        """Start ``argv`` inside this host; its output goes to ``<data_dir>/<label>.log``."""
        log = self.data_dir / f"{label}.log"
        out: IO[bytes]
        with open(log, "ab") as out:
            # `ip netns exec` execs the command after entering the namespace: the PID is the process's.
            proc = subprocess.Popen([*self.wrapper, *argv], env=env, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=self.data_dir, start_new_session=True)
        self.procs.append((label, proc))
        return proc, log


class Network:
    """A bridge, its hosts and the test process's own veth; ``teardown()`` removes all of them."""

    def __init__(self, root: Path) -> None:
        self.tag = f"sgft{os.getpid() % 100000}"
        self.root = root
        self.subnet = free_subnet()
        self.bridge_ns = f"{self.tag}-br"
        self.test_veth = self.tag  # <= 15 characters, the kernel's limit
        self.test_address = f"{self.subnet}.1"
        self.hosts: dict[str, Host] = {}
        self.namespaces: list[str] = []

    def start(self) -> Network:
        ip("netns", "add", self.bridge_ns)
        self.namespaces.append(self.bridge_ns)
        ip("-n", self.bridge_ns, "link", "set", "lo", "up")
        ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        ip("link", "add", self.test_veth, "type", "veth", "peer", "name", "vt", "netns", self.bridge_ns)
        ip("-n", self.bridge_ns, "link", "set", "vt", "master", "br0", "up")
        ip("addr", "add", f"{self.test_address}/24", "dev", self.test_veth)
        ip("link", "set", self.test_veth, "up")
        return self

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 2
        netns = f"{self.tag}-{name}"
        ip("netns", "add", netns)
        self.namespaces.append(netns)
        ip("-n", self.bridge_ns, "link", "add", f"v{index}", "type", "veth", "peer", "name", "eth0", "netns", netns)
        ip("-n", self.bridge_ns, "link", "set", f"v{index}", "master", "br0", "up")
        ip("-n", netns, "link", "set", "lo", "up")
        ip("-n", netns, "addr", "add", f"{self.subnet}.{index}/24", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        data_dir = self.root / name
        data_dir.mkdir(parents=True)
        host = Host(name, netns, f"{self.subnet}.{index}", data_dir)
        self.hosts[name] = host
        return host

    def stop(self, names: list[str], grace_s: float = 20.0) -> list[str]:
        """SIGTERM the processes of these hosts, SIGKILL after ``grace_s``; what did not stop in time.

        20 s: a farm waits drain_timeout + abort_grace + 2 s for its workers, then kills them.
        """
        problems: list[str] = []
        running = [(h, label, p) for h in self.hosts.values() if h.name in names for label, p in h.procs]
        for _, _, proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for host, label, proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                problems.append(f"{host.name}/{label} ignored SIGTERM for {grace_s:g} s")
                proc.kill()
                proc.wait(10)
        return problems

    def teardown(self) -> list[str]:
        """Stop every process (the first host's, the services, last), delete the namespaces and the veth."""
        names = list(self.hosts)
        problems = self.stop(names[1:]) + self.stop(names[:1])
        for netns in reversed(self.namespaces):
            # Deleting a namespace destroys the veth ends inside it, and with them their peers.
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.test_veth], capture_output=True)
        return problems

    def leftovers(self) -> list[str]:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        left = [n for n in self.namespaces if any(line.split()[0] == n for line in listed.splitlines() if line)]
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
        if any(line.split("@")[0].split()[0] == self.test_veth for line in links.splitlines() if line):
            left.append(self.test_veth)
        return left


def clean_env(extra: dict[str, Any] | None = None) -> dict[str, str]:
    """This environment without the names the config loader reads: each host's config.yaml says all."""
    drop = ("STREAMGATE", "REGISTRY", "CONSUL", "AWS_", "S3_", "REDIS_URL", "DEPLOYMENT_MODE", "SERVER_PORT",
            "AUTH_REQUIRED", "SERVICE_NAME", "TRANSCODER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env
