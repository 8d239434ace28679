"""The haproxy role: its config rendered by Ansible passes `haproxy -c -f`, and a real HAProxy from it
in front of two real edges balances keep-alive requests, stops sending to an edge the rolling
update drains (tasks/lb-servers.yml through the runtime API) and to an edge that stops, with no
failed request."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from deploy_support import ANSIBLE_DIR, REPO, tool, tool_env
from support import terminate, wait_until

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _playbook(tmp_path: Path, plays: list[dict[str, object]], inventory: dict[str, object],
              extra: dict[str, object]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "play.yml").write_text(yaml.safe_dump(plays))
    (tmp_path / "vars.yml").write_text(yaml.safe_dump(extra))
    return subprocess.run([tool("ansible-playbook"), "-i", str(tmp_path / "hosts.yml"),
                           "-e", f"@{tmp_path / 'vars.yml'}", str(tmp_path / "play.yml")],
                          cwd=ANSIBLE_DIR, env=tool_env(), capture_output=True, text=True, timeout=240)


def _inventory(ports: dict[str, int]) -> dict[str, object]:
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    edges = {name: {**local, "ansible_host": "127.0.0.1", "streamgate_edge_ports": [port]}
             for name, port in ports.items()}
    return {"all": {"children": {"lb": {"hosts": {"lb-1": local}}, "edge": {"hosts": edges}}}}


def render(tmp_path: Path, ports: dict[str, int], **overrides: object) -> Path:
    """The role converged into a scratch root (no package, no service): the rendered haproxy.cfg."""
    root = tmp_path / "root"
    extra = {"haproxy_root_prefix": str(root), "haproxy_install_package": False,
             "haproxy_manage_service": False, "haproxy_binary": HAPROXY, **overrides}
    result = _playbook(tmp_path, [{"name": "Render HAProxy.", "hosts": "lb", "gather_facts": False,
                                   "roles": [{"role": "haproxy"}]}], _inventory(ports), extra)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return root / "etc/haproxy/haproxy.cfg"


def test_rendered_config_passes_haproxy_check(tmp_path: Path) -> None:
    cfg = render(tmp_path, {"edge-1": 8080, "edge-2": 8081})
    text = cfg.read_text()
    assert "server edge-1-8080 127.0.0.1:8080 check" in text
    assert "server edge-2-8081 127.0.0.1:8081 check" in text
    assert "http-check send meth GET uri /api/v1/health" in text and "option http-server-close" in text
    check = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "Configuration file is valid" in check.stdout + check.stderr


def test_a_broken_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    result = _playbook(tmp_path, [{"name": "Render HAProxy.", "hosts": "lb", "gather_facts": False,
                                   "roles": [{"role": "haproxy"}]}], _inventory({"edge-1": 8080}),
                       {"haproxy_root_prefix": str(tmp_path / "root"), "haproxy_install_package": False,
                        "haproxy_manage_service": False, "haproxy_binary": HAPROXY,
                        "haproxy_check_inter": "not-a-duration"})
    assert result.returncode != 0 and "failed to validate" in result.stdout, result.stdout[-3000:]
    assert not (tmp_path / "root/etc/haproxy/haproxy.cfg").exists()


@pytest.fixture
def edges(tmp_path: Path) -> Iterator[dict[str, tuple[int, subprocess.Popen[bytes]]]]:
    """Two real edges on free ports (no broker here: HAProxy checks their liveness)."""
    started: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    for name in ("edge-a", "edge-b"):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMGATE", "NOTIFY_SOCKET"))}
        env.update(STREAMGATE_CONFIG=str(REPO / "config.yaml"), STREAMGATE_DATA_DIR=str(tmp_path / name),
                   AUTH_REQUIRED="false", STREAMGATE__SERVER__WORKERS="1")
        started[name] = (port, subprocess.Popen([sys.executable, "-m", "streamgate", "edge", "--port", str(port)],
                                                env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL))
    try:
        for port, proc in started.values():
            wait_until(lambda p=port, pr=proc: pr.poll() is not None or _up(p), timeout=60, what="an edge")
            assert proc.poll() is None, "an edge exited"
        yield started
    finally:
        for _, proc in started.values():
            terminate(proc, 30)


def _up(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/health")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def test_haproxy_drains_and_skips_edges_without_failing_a_request(
        tmp_path: Path, edges: dict[str, tuple[int, subprocess.Popen[bytes]]]) -> None:
    front = free_port()
    admin = tmp_path / "admin.sock"
    ports = {name: port for name, (port, _) in edges.items()}
    cfg = render(tmp_path, ports, haproxy_port=front, haproxy_bind_address="127.0.0.1",
                 haproxy_admin_socket=str(admin), haproxy_chroot="", haproxy_user="",
                 haproxy_log_target="stdout", haproxy_check_path="/health",
                 haproxy_check_inter="200ms",
                 # This machine cannot raise the fd limit past 20000 (docs/fleet-hosts.md).
                 haproxy_maxconn=2000)
    proxy = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    conn = http.client.HTTPConnection("127.0.0.1", front, timeout=10)
    served: list[str] = []
    failures: list[int] = []

    def get() -> str:
        # One keep-alive connection for the whole test: a player that never reconnects.
        conn.request("GET", "/health")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            failures.append(response.status)
        edge = response.getheader("X-StreamGate-Edge") or ""
        served.append(edge)
        return edge

    def drain(host: str, state: str) -> None:
        result = _playbook(tmp_path / "drain", [{
            "name": "Set a host's servers.", "hosts": host, "gather_facts": False,
            "vars": {"streamgate_rolling_lb_state": state, "streamgate_rolling_lb_admin_socket": str(admin),
                     "streamgate_rolling_lb_backend": "streamgate_edges"},
            "tasks": [{"name": "Set them.", "ansible.builtin.include_tasks": str(ANSIBLE_DIR / "tasks/lb-servers.yml")}],
        }], _inventory(ports), {})
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]

    (tmp_path / "drain").mkdir()
    try:
        wait_until(lambda: admin.exists() and _up(front), timeout=30, what="haproxy's frontend")
        wait_until(lambda: {get() for _ in range(6)} == {f"edge-a-{ports['edge-a']}", f"edge-b-{ports['edge-b']}"},
                   timeout=30, what="both edges in rotation")

        drain("edge-a", "drain")
        assert {get() for _ in range(20)} == {f"edge-b-{ports['edge-b']}"}, "a drained edge got requests"
        drain("edge-a", "ready")
        wait_until(lambda: f"edge-a-{ports['edge-a']}" in {get() for _ in range(6)}, timeout=30,
                   what="edge-a back in rotation")

        # An edge that stops: its requests go to the other one, on the same player connection.
        terminate(edges["edge-b"][1], 30)
        assert {get() for _ in range(20)} == {f"edge-a-{ports['edge-a']}"}
        assert failures == [], failures
        assert len(served) >= 46
    finally:
        conn.close()
        proxy.send_signal(signal.SIGTERM)
        try:
            proxy.wait(20)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()
