"""A fleet of hosts on one machine: systemd-nspawn containers booting systemd as PID 1, reached over SSH.

Each host is a ``systemd-nspawn --boot`` over an overlayfs whose lower layer is the cached Debian 12
tree (tests/fleet/rootfs.py) and whose upper layer is the host's own root-owned state; it joins a
network namespace this harness creates (``--network-namespace-path=``), wired by a veth to a bridge
in another namespace of the harness. The controller (the machine's own namespace, where pytest,
Ansible and the Consul stand-in run) reaches the bridge through a veth of its own, with the first
address of the fleet's private /24; that veth exists only while the fleet is up. No route leaves
the subnet: hosts have no default route, so nothing they do reaches past the bridge.

Why nspawn and these flags (docs/fleet-hosts.md has what was tried and how it failed):
``--register=no --keep-unit`` because the machine's PID 1 is not systemd (no machined, no system
bus); each container is put in a cgroup of its own first, so the hosts' systemds do not share the
cgroup2 root; loopback is brought up from outside because nspawn withholds CAP_NET_ADMIN from a
container that joins a given namespace.

Everything up() creates is written to ``<state>/fleet.json`` as it is created, so down() (in this
process or another: ``python tests/fleet/hosts.py down``) stops exactly those processes by PID and
removes exactly those mounts, cgroups, veths and namespaces.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec

# Appended, never first: the suite's own modules (conftest, support) must keep resolving to tests/.
if str(Path(__file__).parent) not in sys.path:
    sys.path.append(str(Path(__file__).parent))
from rootfs import DEFAULT_CACHE, ensure_rootfs  # noqa: E402

CGROUP_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"))
CGROUP_PARENT = "streamgate-fleet"
BOOT_TIMEOUT_S = 120.0
HALT_TIMEOUT_S = 30.0


class HostState(msgspec.Struct, kw_only=True):
    name: str
    address: str
    netns: str
    machine: str
    state_dir: str
    pid: int = 0
    mounted: bool = False
    cgroups: list[str] = []


class FleetState(msgspec.Struct, kw_only=True):
    name: str
    subnet: str  # the first three octets, e.g. "10.213.0"
    state_dir: str
    bridge_netns: str
    controller_veth: str
    hosts: list[HostState] = []
    bridge_up: bool = False


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


def _netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def _mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


class Fleet:
    """N named hosts on a private /24; ``up()`` boots them, ``down()`` removes every trace."""

    def __init__(self, state_dir: Path, hosts: list[str] | None = None, *, name: str = "sgf",
                 subnet: str = "10.213.0", cache: Path = DEFAULT_CACHE,
                 binds: list[tuple[Path, str]] | None = None) -> None:
        if len(name) > 6:
            raise ValueError("a fleet name has at most 6 characters (interface names are 15)")
        self.state_dir = state_dir
        self.cache = cache
        # Read-only views of controller directories inside every host (src, path in the host).
        self.binds = binds or []
        self.state_file = state_dir / "fleet.json"
        self._procs: dict[int, subprocess.Popen[bytes]] = {}  # nspawns this process started
        if self.state_file.exists():
            self.state = msgspec.json.decode(self.state_file.read_bytes(), type=FleetState)
        else:
            names = hosts or ["h1", "h2"]
            self.state = FleetState(
                name=name, subnet=subnet, state_dir=str(state_dir), bridge_netns=f"{name}-br",
                controller_veth=f"{name}-ctl",
                hosts=[HostState(name=h, address=f"{subnet}.{11 + i}", netns=f"{name}-{h}",
                                 machine=f"{name}-{h}", state_dir=str(state_dir / h))
                       for i, h in enumerate(names)])

    # ------------------------------------------------------------------ facts
    @property
    def controller_address(self) -> str:
        """The controller's address on the bridge: where hosts reach the Consul stand-in."""
        return f"{self.state.subnet}.1"

    @property
    def key(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.state_dir / "ssh_config"

    def host(self, name: str) -> HostState:
        return next(h for h in self.state.hosts if h.name == name)

    def ssh_argv(self, host: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), host]

    def ssh(self, host: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.ssh_argv(host), command], capture_output=True, text=True,
                              timeout=timeout)

    def _save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(self.state))
        tmp.replace(self.state_file)

    # ------------------------------------------------------------------ up
    def up(self) -> Fleet:
        if os.geteuid() != 0:
            raise PermissionError("a fleet needs root (network namespaces, overlayfs, nspawn)")
        for tool in ("systemd-nspawn", "ip", "ssh", "ssh-keygen"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is missing: apt-get install systemd-container iproute2 openssh-client")
        for ns in [self.state.bridge_netns, *(h.netns for h in self.state.hosts)]:
            if _netns_exists(ns) and not self.state_file.exists():
                raise RuntimeError(f"network namespace {ns} exists: a fleet is up (python tests/fleet/hosts.py down)")
        self.cache.mkdir(parents=True, exist_ok=True)
        lower = ensure_rootfs(self.cache, self.cache / "build.log")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self._save()
        try:
            self._keys()
            self._bridge()
            for host in self.state.hosts:
                self._start_host(host, lower)
            deadline = time.monotonic() + BOOT_TIMEOUT_S
            for host in self.state.hosts:
                self._wait_booted(host, deadline)
        except BaseException:
            self.down()
            raise
        return self

    def _keys(self) -> None:
        if not self.key.exists():
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{self.state.name}-controller",
                 "-f", str(self.key))
        lines = []
        for host in self.state.hosts:
            lines += [f"Host {host.name}", f"  HostName {host.address}", "  User root",
                      f"  IdentityFile {self.key}", "  IdentitiesOnly yes",
                      f"  UserKnownHostsFile {self.known_hosts}", "  StrictHostKeyChecking yes",
                      "  BatchMode yes", "  ConnectTimeout 5", ""]
        self.ssh_config.write_text("\n".join(lines))

    def _bridge(self) -> None:
        st = self.state
        br = st.bridge_netns
        _run("ip", "netns", "add", br)
        st.bridge_up = True
        self._save()
        _run("ip", "-n", br, "link", "set", "lo", "up")
        _run("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", br, "link", "set", "br0", "up")
        # The controller's leg: one end here in the machine's namespace, the other on the bridge.
        _run("ip", "link", "add", st.controller_veth, "type", "veth", "peer", "name", "ctl", "netns", br)
        _run("ip", "-n", br, "link", "set", "ctl", "master", "br0", "up")
        _run("ip", "addr", "add", f"{self.controller_address}/24", "dev", st.controller_veth)
        _run("ip", "link", "set", st.controller_veth, "up")

    def _start_host(self, host: HostState, lower: Path) -> None:
        st = self.state
        state = Path(host.state_dir)
        upper, work, merged = state / "upper", state / "work", state / "root"
        for d in (upper, work, merged):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)
        _run("ip", "netns", "add", host.netns)
        _run("ip", "-n", host.netns, "link", "set", "lo", "up")
        leg = f"v-{host.name}"[:15]
        _run("ip", "-n", st.bridge_netns, "link", "add", leg, "type", "veth", "peer", "name", "eth0",
             "netns", host.netns)
        _run("ip", "-n", st.bridge_netns, "link", "set", leg, "master", "br0", "up")
        _run("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _run("ip", "-n", host.netns, "link", "set", "eth0", "up")
        _run("mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged))
        host.mounted = True
        self._save()
        self._provision(host, merged)
        host.cgroups = [str(root / CGROUP_PARENT / host.machine) for root in CGROUP_ROOTS if root.is_dir()]
        for cg in host.cgroups:
            Path(cg).mkdir(parents=True, exist_ok=True)
        self._save()
        log = open(state / "console.log", "ab")
        cgroups = list(host.cgroups)

        def into_own_cgroup() -> None:
            # Before exec: the container's systemd then owns this cgroup's subtree, not the root's.
            for cg in cgroups:
                Path(cg, "cgroup.procs").write_text(str(os.getpid()))

        proc = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "--boot", f"--directory={merged}", f"--machine={host.machine}",
             f"--hostname={host.name}", "--register=no", "--keep-unit",
             f"--network-namespace-path=/run/netns/{host.netns}", "--console=passive",
             "--link-journal=no", "--resolv-conf=off", "--timezone=off",
             *(f"--bind-ro={src}:{dst}" for src, dst in self.binds)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=into_own_cgroup)
        log.close()
        host.pid = proc.pid
        self._procs[proc.pid] = proc
        self._save()

    def _provision(self, host: HostState, root: Path) -> None:
        """Root's authorized key and this host's own SSH host keys (the cached tree's are shared)."""
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        os.chmod(ssh_dir / "authorized_keys", 0o600)
        for old in (root / "etc/ssh").glob("ssh_host_*"):
            old.unlink()
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host.name}",
             "-f", str(root / "etc/ssh/ssh_host_ed25519_key"))
        public = (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
        with open(self.known_hosts, "a") as known:
            known.write(f"{host.address} {public[0]} {public[1]}\n")
        (root / "etc/hostname").write_text(host.name + "\n")
        # The names of the fleet resolve on every host (no DNS inside the subnet).
        (root / "etc/hosts").write_text("127.0.0.1 localhost\n" + "".join(
            f"{h.address} {h.name}\n" for h in self.state.hosts) + f"{self.controller_address} controller\n")

    def _wait_booted(self, host: HostState, deadline: float) -> None:
        last = ""
        while time.monotonic() < deadline:
            if host.pid and not Path(f"/proc/{host.pid}").exists():
                raise RuntimeError(f"{host.name}: systemd-nspawn exited; see {host.state_dir}/console.log")
            try:
                result = self.ssh(host.name, "systemctl is-system-running --wait", timeout=30)
                last = (result.stdout + result.stderr).strip()
                if result.stdout.strip() in ("running", "degraded"):
                    return
            except subprocess.TimeoutExpired:
                last = "ssh timed out"
            time.sleep(0.5)
        raise RuntimeError(f"{host.name} did not boot within {BOOT_TIMEOUT_S:.0f}s: {last}")

    # ------------------------------------------------------------------ down
    def down(self) -> None:
        """Stop every host by its PID, then unmount, remove cgroups, veths, namespaces and state."""
        st = self.state
        for host in st.hosts:
            if host.pid and _alive(host.pid):
                # nspawn turns SIGTERM into a halt request to the container's systemd.
                os.kill(host.pid, signal.SIGTERM)
        deadline = time.monotonic() + HALT_TIMEOUT_S
        for host in st.hosts:
            if host.pid:
                _reap(host.pid, deadline, self._procs.pop(host.pid, None))
                for pid in _cgroup_pids(host.cgroups):
                    os.kill(pid, signal.SIGKILL)
                host.pid = 0
            self._save()
        for host in st.hosts:
            root = Path(host.state_dir) / "root"
            if host.mounted or _mounted(root):
                if _mounted(root):
                    _run("umount", str(root))
                host.mounted = False
            _remove_cgroups(host.cgroups)
            host.cgroups = []
            if _netns_exists(host.netns):
                _run("ip", "netns", "delete", host.netns)
            self._save()
        if _run("ip", "link", "show", st.controller_veth, check=False).returncode == 0:
            _run("ip", "link", "delete", st.controller_veth)
        if _netns_exists(st.bridge_netns):
            _run("ip", "netns", "delete", st.bridge_netns)
        st.bridge_up = False
        for host in st.hosts:
            if not _mounted(Path(host.state_dir) / "root"):
                shutil.rmtree(host.state_dir, ignore_errors=True)
        for name in ("known_hosts", "ssh_config", "id_ed25519", "id_ed25519.pub", "fleet.json"):
            (self.state_dir / name).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _reap(pid: int, deadline: float, proc: subprocess.Popen[bytes] | None) -> None:
    """Wait for ``pid`` (our child, or a child of the process that ran up()); SIGKILL at the deadline."""
    if proc is not None:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:  # not our child: up() ran in another process
            if not _alive(pid):
                return
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _cgroup_pids(cgroups: list[str]) -> list[int]:
    """Whatever is left in a host's cgroup after its nspawn is gone (normally nothing)."""
    pids: set[int] = set()
    for cg in cgroups:
        for procs in Path(cg).rglob("cgroup.procs") if Path(cg).is_dir() else []:
            pids.update(int(p) for p in procs.read_text().split())
    return sorted(pids)


def _remove_cgroups(cgroups: list[str]) -> None:
    for cg in cgroups:
        path = Path(cg)
        if not path.is_dir():
            continue
        # Deepest first: a cgroup directory is removed with rmdir once its children are.
        for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            sub.rmdir()
        path.rmdir()
        parent = path.parent
        if parent.name == CGROUP_PARENT and not any(p.is_dir() for p in parent.iterdir()):
            parent.rmdir()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bring a fleet of nspawn hosts up or down (root)")
    parser.add_argument("action", choices=["up", "down", "ssh-config"])
    parser.add_argument("--state", type=Path, default=Path("/var/lib/streamgate-fleet/dev"),
                        help="the fleet's root-owned state directory")
    parser.add_argument("--hosts", default="h1,h2", help="comma-separated host names (up)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the rootfs is cached")
    args = parser.parse_args(argv)
    fleet = Fleet(args.state, args.hosts.split(","), cache=args.cache)
    if args.action == "up":
        started = time.monotonic()
        fleet.up()
        print(f"fleet up in {time.monotonic() - started:.1f}s; controller {fleet.controller_address}")
        for host in fleet.state.hosts:
            print(f"  {host.name}: {host.address}  ssh -F {fleet.ssh_config} {host.name}")
    elif args.action == "down":
        fleet.down()
        print("fleet down")
    else:
        print(fleet.ssh_config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
