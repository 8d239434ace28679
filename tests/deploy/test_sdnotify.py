"""The systemd notify protocol against a real AF_UNIX datagram socket standing where systemd's is.

A real ``python -m streamgate edge`` child gets NOTIFY_SOCKET and WATCHDOG_USEC as systemd would
set them (sd_notify(3), sd_watchdog_enabled(3)); the test reads what it sends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import REPO

from streamgate.common.config import systemd_environment
from streamgate.common.sdnotify import Notifier

WATCHDOG_USEC = 400_000  # pings expected every 0.2 s
# The edge test measures the pace: a wider period keeps a loaded 2-core machine from blurring it.
EDGE_WATCHDOG_USEC = 1_000_000  # pings expected every 0.5 s


class NotifySocket:
    """What systemd listens on: a datagram socket; every message is (arrival time, fields)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + path[1:] if path.startswith("@") else path)
        self.messages: list[tuple[float, list[str]]] = []

    def receive(self, timeout: float) -> list[str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = data.decode().split("\n")
        self.messages.append((time.monotonic(), fields))
        return fields

    def wait_for(self, field: str, timeout: float) -> float:
        """Arrival time of the first message holding ``field`` (earlier ones are kept)."""
        for when, fields in self.messages:
            if field in fields:
                return when
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            fields = self.receive(left)
            if fields is not None and field in fields:
                return self.messages[-1][0]
        raise AssertionError(f"no {field} within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # AF_UNIX paths are limited to 107 bytes: a short directory, not pytest's tmp_path.
    directory = tempfile.mkdtemp(prefix="sg-notify-", dir="/tmp")
    sock = NotifySocket(os.path.join(directory, "notify"))
    yield sock
    sock.close()
    shutil.rmtree(directory)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def role_env(data_dir: Path, notify_path: str, watchdog_usec: int = WATCHDOG_USEC, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STREAMGATE", "WATCHDOG_", "NOTIFY_SOCKET", "REDIS_URL", "REGISTRY_TYPE"))}
    env.update(STREAMGATE_CONFIG=str(REPO / "config.yaml"), STREAMGATE_DATA_DIR=str(data_dir),
               AUTH_REQUIRED="false", STREAMGATE__SERVER__WORKERS="1", NOTIFY_SOCKET=notify_path,
               WATCHDOG_USEC=str(watchdog_usec))
    env.update(extra)
    return env


def health(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
        return response.status


def test_edge_ready_watchdog_stopping(notify_socket: NotifySocket, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamgate", "edge", "--port", str(port)],
                            env=role_env(tmp_path / "data", notify_socket.path, EDGE_WATCHDOG_USEC),
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # Nothing answers before READY=1 is sent... and the port answers the moment it arrives.
        ready_at = notify_socket.wait_for("READY=1", timeout=60)
        assert health(port) == 200
        ready_fields = next(f for _, f in notify_socket.messages if "READY=1" in f)
        assert any(f.startswith("STATUS=edge on") for f in ready_fields), ready_fields

        # WATCHDOG=1 from the event loop at half of WATCHDOG_USEC.
        deadline = ready_at + 2.6
        while time.monotonic() < deadline:
            notify_socket.receive(max(0.01, deadline - time.monotonic()))
        pings = [when for when, fields in notify_socket.messages if "WATCHDOG=1" in fields]
        assert len(pings) >= 5, notify_socket.messages
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert 0.4 <= statistics.median(gaps) <= 0.65, gaps
        assert max(gaps) < EDGE_WATCHDOG_USEC / 1e6, "a ping came later than the watchdog would allow"

        proc.send_signal(signal.SIGTERM)
        stopping_at = notify_socket.wait_for("STOPPING=1", timeout=15)
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
        assert stopping_at > ready_at
        stopping = next(f for _, f in notify_socket.messages if "STOPPING=1" in f)
        assert "STATUS=edge stopping" in stopping
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_ready_is_not_sent_when_the_port_is_taken(notify_socket: NotifySocket, tmp_path: Path) -> None:
    """A role that cannot serve fails without READY=1: systemd sees a failed start, not a lie."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "streamgate", "edge", "--port", str(port)],
                                env=role_env(tmp_path / "data", notify_socket.path,
                                             STREAMGATE__SERVER__HOST="127.0.0.1"),
                                cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    while notify_socket.receive(0.05) is not None:
        pass
    assert not any("READY=1" in fields for _, fields in notify_socket.messages), notify_socket.messages
    statuses = [f for _, fields in notify_socket.messages for f in fields if f.startswith("STATUS=")]
    assert statuses[0] == "STATUS=edge starting"
    assert statuses[-1].startswith("STATUS=edge failed: OSError"), statuses  # what systemctl status shows


BLOCKING_ROLE = textwrap.dedent("""
    import asyncio, sys, time
    from streamgate.common.config import load_config
    from streamgate.common.service import run_service

    async def serve(ctx):
        ctx.ready("blocking role up")
        await asyncio.sleep(0.5)
        ctx.status("about to block")
        time.sleep(1.0)  # a wedged loop: no pings may be sent meanwhile
        ctx.status("unblocked")
        await ctx.stop.wait()

    sys.exit(run_service("blocker", serve, load_config()))
""")


def test_a_blocked_loop_stops_the_watchdog_pings(notify_socket: NotifySocket, tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", BLOCKING_ROLE],
                            env=role_env(tmp_path / "data", notify_socket.path), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        notify_socket.wait_for("STATUS=unblocked", timeout=30)
        # Datagrams queue in send order: judge by order, not by when this process read them.
        kinds = [fields[0] for _, fields in notify_socket.messages]
        blocked, unblocked = kinds.index("STATUS=about to block"), kinds.index("STATUS=unblocked")
        assert "WATCHDOG=1" not in kinds[blocked:unblocked], "pinged while the loop was blocked"
        assert "WATCHDOG=1" in kinds[:blocked], "no pings before the block"
        # ...and the pings resume once the loop runs again.
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            notify_socket.receive(0.1)
        assert "WATCHDOG=1" in [fields[0] for _, fields in notify_socket.messages][unblocked + 1:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_abstract_namespace_socket() -> None:
    name = f"@streamgate-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifySocket(name)
    try:
        notifier = Notifier(name, WATCHDOG_USEC)
        assert notifier.enabled and notifier.watchdog_interval_s == pytest.approx(0.2)
        assert notifier.ready("up") and notifier.watchdog() and notifier.stopping("down")
        got = [listener.receive(2) for _ in range(3)]
        assert got == [["READY=1", "STATUS=up"], ["WATCHDOG=1"], ["STOPPING=1", "STATUS=down"]]
        notifier.close()
    finally:
        listener.close()


def test_without_systemd_nothing_is_sent() -> None:
    env = systemd_environment({})
    notifier = Notifier.from_environment(env)
    assert not notifier.enabled and notifier.watchdog_interval_s is None
    assert notifier.ready() is False and notifier.watchdog() is False


def test_watchdog_for_another_pid_is_ignored() -> None:
    # sd_watchdog_enabled(3): WATCHDOG_PID names the process the watchdog is meant for.
    other = systemd_environment({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    mine = systemd_environment({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000",
                                "WATCHDOG_PID": str(os.getpid())})
    assert other.watchdog_usec is None and mine.watchdog_usec == 1_000_000


def test_a_vanished_socket_does_not_crash_the_service(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.send("STATUS=x") is False
    notifier.close()


@pytest.mark.parametrize("role", ["broker", "farm", "control"])
def test_every_role_sends_ready_then_stopping(role: str, notify_socket: NotifySocket) -> None:
    """Their units are Type=notify too: a role that never sent READY=1 would fail its start."""
    # ipc:// endpoints live under data/run and are limited to 107 bytes: a short data dir.
    data = Path(tempfile.mkdtemp(prefix="sg-role-", dir="/tmp"))
    env = role_env(data, notify_socket.path, TRANSCODER_WORKERS="1",
                   STREAMGATE__TRANSCODER__SCALING_POLICY__MIN_WORKERS="1",
                   STREAMGATE__SERVER__CONTROL_PORT=str(free_port()), STREAMGATE__METRICS__ENABLED="false")
    proc = subprocess.Popen([sys.executable, "-m", "streamgate", role], env=env, cwd=data,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ready_at = notify_socket.wait_for("READY=1", timeout=60)
        status = next(f for _, f in notify_socket.messages if "READY=1" in f)
        assert any(f.startswith("STATUS=") for f in status), status
        proc.send_signal(signal.SIGTERM)
        assert notify_socket.wait_for("STOPPING=1", timeout=30) > ready_at
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(data, ignore_errors=True)
