"""`streamgate run`: one command starts the node; signals stop it in order and leave nothing behind."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

from support import alive, descendants_of, title_of, wait_until


def get_json(url: str) -> tuple[int, dict[str, object]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, json.loads(response.read())


def test_health_and_readiness(run_platform) -> None:
    platform = run_platform()
    status, body = get_json(platform.url + "/health")
    assert status == 200 and body["status"] == "ok"
    status, body = get_json(platform.url + "/api/v1/health")
    assert status == 200
    assert body["checks"]["disk"]["ok"] is True


def test_roles_name_themselves(run_platform) -> None:
    platform = run_platform()
    assert title_of(platform.proc.pid).startswith("streamgate run")
    titles = wait_until(lambda: [t for p in descendants_of(platform.proc.pid) if (t := title_of(p))
                                 and "streamgate edge" in t], what="an edge process titled 'streamgate edge'")
    assert titles


def test_sigterm_stops_every_process(run_platform) -> None:
    platform = run_platform()
    tree = wait_until(lambda: descendants_of(platform.proc.pid), what="child processes")
    assert platform.stop(signal.SIGTERM) == 0
    wait_until(lambda: not any(alive(p) for p in tree), timeout=15, what="every child to exit")


def test_ctrl_c_stops_every_process(run_platform) -> None:
    platform = run_platform()
    tree = wait_until(lambda: descendants_of(platform.proc.pid), what="child processes")
    assert platform.stop(signal.SIGINT) == 0
    wait_until(lambda: not any(alive(p) for p in tree), timeout=15, what="every child to exit")


def test_children_exit_when_the_supervisor_is_killed(run_platform) -> None:
    platform = run_platform()
    tree = wait_until(lambda: descendants_of(platform.proc.pid), what="child processes")
    platform.proc.kill()
    platform.proc.wait(10)
    wait_until(lambda: not any(alive(p) for p in tree), timeout=20, what="orphaned children to exit")


def test_a_crashed_role_is_restarted(run_platform) -> None:
    platform = run_platform()
    edges = wait_until(lambda: [p for p in descendants_of(platform.proc.pid) if title_of(p) == "streamgate edge"],
                       what="the edge process")
    import os

    os.kill(edges[0], signal.SIGKILL)

    def healthy_again() -> bool:
        try:
            return get_json(platform.url + "/health")[0] == 200 and alive(platform.proc.pid)
        except OSError:
            return False

    wait_until(lambda: not alive(edges[0]), timeout=10, what="the killed edge to die")
    wait_until(healthy_again, timeout=30, what="the edge to be restarted")
    assert "restarting" in platform.log.read_text()


def test_children_do_not_inherit_the_units_notify_socket(run_platform, tmp_path) -> None:
    # Only a unit's main process may speak to systemd; a child with NOTIFY_SOCKET would claim READY.
    platform = run_platform(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="30000000")
    children = wait_until(lambda: descendants_of(platform.proc.pid), what="child processes")
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not any(v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_USEC=")) for v in environ), title_of(pid)
