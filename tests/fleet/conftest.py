"""Fixtures of the fleet room: hosts booting systemd under systemd-nspawn (root only)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).parent))
# The Consul stand-in the hosts register into lives with the control-plane tests.
sys.path.append(str(Path(__file__).parent.parent / "control"))
from hosts import Fleet  # noqa: E402


def fleet_unavailable() -> str:
    """Why no fleet can run here, or "" when it can."""
    if os.geteuid() != 0:
        return "a fleet needs root (network namespaces, overlayfs, systemd-nspawn)"
    missing = [t for t in ("systemd-nspawn", "mmdebstrap", "ip", "ssh") if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install systemd-container mmdebstrap iproute2 openssh-client"
    return ""


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """Bring up a fleet of named hosts (its own name and /24, apart from `make fleet-up`'s); down after."""
    reason = fleet_unavailable()
    if reason:
        pytest.skip(reason)
    fleets: list[Fleet] = []

    def make(hosts: list[str], *, name: str = "sgt", subnet: str = "10.213.1",
             binds: list[tuple[Path, str]] | None = None) -> Fleet:
        fleet = Fleet(tmp_path / name, hosts, name=name, subnet=subnet, binds=binds)
        fleets.append(fleet)
        return fleet.up()

    yield make
    for fleet in fleets:
        fleet.down()
