"""Paths and helpers of the deployment checks (systemd units, Ansible, the notify protocol)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO / "systemd"
ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent
# Every unit the repo ships, and the instance name systemd-analyze loads it under.
UNITS = {
    "streamgate-edge@.service": "streamgate-edge@8080.service",
    "streamgate-broker.service": "streamgate-broker.service",
    "streamgate-farm.service": "streamgate-farm.service",
    "streamgate-control.service": "streamgate-control.service",
    "streamgate.target": "streamgate.target",
}
SERVICES = [name for name in UNITS if name.endswith(".service")]


def tool(name: str) -> str:
    """A command from this venv (ansible-*), else from PATH (systemd-analyze); skip nothing: fail."""
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed (make test installs the test extra; systemd-analyze comes with systemd)")
    return str(found)


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for ansible tools: this venv first on PATH, no network, no stray config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "STREAMGATE"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", NO_COLOR="1", PY_COLORS="0")
    env.update(extra)
    return env


def systemd_root(root: Path) -> Path:
    """Make ``root`` a tree systemd-analyze --root can load units from (the host's stock units)."""
    stock = root / "usr/lib/systemd/system"
    if not stock.exists():
        stock.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree("/usr/lib/systemd/system", stock, symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
    return root
