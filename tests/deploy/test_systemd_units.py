"""The unit files in systemd/: they load cleanly, score well for hardening and say what the issue asks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import SERVICES, SYSTEMD_DIR, UNITS, systemd_root, tool

SECURITY_THRESHOLD = 2.0
EXEC = "/opt/streamgate/venv/bin/streamgate"


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> every value given (systemd keys repeat), comments dropped."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


@pytest.fixture(scope="module")
def analyze_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with the stock units, the repo's units and an executable at ExecStart's path."""
    root = systemd_root(tmp_path_factory.mktemp("root"))
    for name in UNITS:
        shutil.copy2(SYSTEMD_DIR / name, root / "etc/systemd/system" / name)
    exe = root / EXEC.lstrip("/")
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return root


def test_every_role_has_a_unit() -> None:
    assert sorted(p.name for p in SYSTEMD_DIR.iterdir()) == sorted(UNITS)


@pytest.mark.parametrize("unit", list(UNITS))
def test_systemd_analyze_verify_is_silent(unit: str, analyze_root: Path) -> None:
    # Unknown keys and bad values only warn (exit 0), so any stderr output fails the check.
    result = subprocess.run([tool("systemd-analyze"), "verify", f"--root={analyze_root}", UNITS[unit]],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_verify_catches_a_missing_executable_and_an_unknown_key(tmp_path: Path) -> None:
    """The check above can fail: a unit with a typo'd key and a missing binary is reported."""
    root = systemd_root(tmp_path)
    text = (SYSTEMD_DIR / "streamgate-broker.service").read_text().replace("[Service]", "[Service]\nRestartt=always")
    (root / "etc/systemd/system/streamgate-broker.service").write_text(text)
    result = subprocess.run([tool("systemd-analyze"), "verify", f"--root={root}", "streamgate-broker.service"],
                            capture_output=True, text=True, timeout=60)
    assert "Unknown key 'Restartt'" in result.stderr
    assert f"Command {EXEC} is not executable" in result.stderr


@pytest.mark.parametrize("unit", SERVICES)
def test_security_exposure_at_most_threshold(unit: str) -> None:
    result = subprocess.run([tool("systemd-analyze"), "security", "--offline=yes", "--no-pager",
                             str(SYSTEMD_DIR / unit)], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= SECURITY_THRESHOLD, result.stdout


@pytest.mark.parametrize("unit", SERVICES)
def test_service_contract(unit: str) -> None:
    s = unit_settings(SYSTEMD_DIR / unit)
    role = unit.removeprefix("streamgate-").split("@")[0].split(".")[0]
    assert s["Service.Type"] == ["notify"] and s["Service.NotifyAccess"] == ["main"]
    assert int(s["Service.WatchdogSec"][0].rstrip("s")) > 0
    assert s["Service.Restart"] == ["on-failure"]
    assert s["Service.User"] == ["streamgate"] and s["Service.Group"] == ["streamgate"]
    assert s["Service.ExecStart"][0].split()[:2] == [EXEC, role]
    assert "STREAMGATE_CONFIG=/etc/streamgate/config.yaml" in s["Service.Environment"]
    assert f"-/etc/streamgate/{role}.env" in s["Service.EnvironmentFile"]
    for key in ("StateDirectory", "RuntimeDirectory", "LogsDirectory", "LimitNOFILE", "ReadWritePaths"):
        assert s.get(f"Service.{key}"), key
    assert s["Service.ProtectSystem"] == ["strict"] and s["Service.NoNewPrivileges"] == ["yes"]
    # The broker also needs AF_NETLINK: libzmq resolves its bind address with getifaddrs.
    netlink = " AF_NETLINK" if role == "broker" else ""
    assert s["Service.RestrictAddressFamilies"] == [f"AF_UNIX AF_INET AF_INET6{netlink}"]
    assert s["Service.CapabilityBoundingSet"] == [""]
    assert s["Install.WantedBy"] == ["streamgate.target"]


def test_farm_metrics_dir_is_in_its_runtime_directory() -> None:
    s = unit_settings(SYSTEMD_DIR / "streamgate-farm.service")
    runtime = s["Service.RuntimeDirectory"][0].split()
    env = dict(v.split("=", 1) for v in s["Service.Environment"])
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/run/streamgate-farm/prometheus"
    assert "streamgate-farm/prometheus" in runtime
    # Only the pool supervisor gets SIGTERM, so it can hand running jobs back before the kill.
    assert s["Service.KillMode"] == ["mixed"]


def test_edge_is_a_template_over_ports() -> None:
    s = unit_settings(SYSTEMD_DIR / "streamgate-edge@.service")
    assert s["Service.ExecStart"] == [f"{EXEC} edge --port %i"]
    assert s["Service.RuntimeDirectory"] == ["streamgate-edge-%i"]


def test_memory_deny_write_execute_suits_the_media_stack(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes: decode, encode, numpy and cffi run with W^X enforced by the kernel.

    PR_SET_MDWE (Linux 6.3) refuses to make memory executable, the rule systemd's seccomp filter
    enforces; a JIT would die here.
    """
    script = tmp_path / "mdwe.py"
    script.write_text(
        "import ctypes, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.prctl(65, 1, 0, 0, 0) != 0:\n"
        "    sys.exit(77)\n"
        "import av, numpy, zmq, uvloop, msgspec, aiohttp\n"
        "from eth_account import Account\n"
        "from eth_account.messages import encode_defunct\n"
        "from streamgate.common.synth import make_video\n"
        "path = make_video(__import__('pathlib').Path(sys.argv[1]), seconds=0.5, width=160, height=120)\n"
        "with av.open(str(path)) as c:\n"
        "    frames = [f.to_ndarray() for f in c.decode(video=0)]\n"
        "acct = Account.create()\n"
        "sig = acct.sign_message(encode_defunct(text='x')).signature\n"
        "assert Account.recover_message(encode_defunct(text='x'), signature=sig) == acct.address\n"
        "assert numpy.stack(frames).sum() > 0\n"
        "print('ok', len(frames))\n"
    )
    result = subprocess.run([sys.executable, "-W", "ignore", str(script), str(tmp_path / "clip.mp4")],
                            capture_output=True, text=True, timeout=60)
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr[-2000:]
