"""The Debian 12 root filesystem every fleet host boots: built once by ``mmdebstrap``, cached by recipe.

Building takes a minute or two (Debian's packages, downloaded through apt), so the result is kept
outside the repository under ``/var/cache/streamgate-fleet/rootfs-<hash>`` where the hash covers
the suite, the mirror and the package list: change any of them and a new tree is built next to
the old one. The cache is a directory rather than a tarball because every host mounts it as the
read-only lower layer of its own overlayfs: nothing is unpacked per host, and a host's writes land
in its own upper directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# systemd is PID 1 of every host; sshd is how Ansible reaches it; python3 (and venv) is what
# Ansible's modules and the StreamGate release need; iproute2 and curl for an operator's look.
PACKAGES = sorted(["systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-venv",
                   "iproute2", "ca-certificates", "curl",
                   # What the roles install on a real host (streamgate_common_system_packages): the
                   # hosts have no route to a mirror. python3-packaging: Ansible's pip module needs it.
                   "python3-packaging",
                   # The lb hosts' HAProxy (the haproxy role, with haproxy_install_package: false).
                   "haproxy"])
DEFAULT_CACHE = Path("/var/cache/streamgate-fleet")
BUILD_TIMEOUT_S = 1800


def recipe_key() -> str:
    recipe = "\n".join([SUITE, MIRROR, *PACKAGES])
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def rootfs_path(cache: Path = DEFAULT_CACHE) -> Path:
    return cache / f"rootfs-{recipe_key()}"


def ensure_rootfs(cache: Path = DEFAULT_CACHE, log: Path | None = None) -> Path:
    """The cached tree, built with mmdebstrap first when missing (one builder at a time)."""
    target = rootfs_path(cache)
    if (target / "usr/lib/systemd/systemd").exists():
        return target
    if shutil.which("mmdebstrap") is None:
        raise RuntimeError("mmdebstrap is missing: apt-get install mmdebstrap systemd-container")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "usr/lib/systemd/systemd").exists():  # built by whoever held the lock
            return target
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            subprocess.run(["mmdebstrap", "--variant=minbase", "--format=directory",
                            f"--include={','.join(PACKAGES)}", SUITE, str(partial), MIRROR],
                           check=True, stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S)
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        partial.rename(target)
    return target
