"""``streamgate status``: tables, ``--json`` and ``--watch``, with or without a control service."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from agent_api import free_port

REPO = Path(__file__).resolve().parents[2]


def streamgate_env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMGATE", "REGISTRY", "CONSUL"))}
    env.update({"STREAMGATE_DATA_DIR": str(data_dir), "SERVER_PORT": str(port),
                "STREAMGATE_CONFIG": str(REPO / "config.yaml"), **extra})
    return env


def test_status_watch_json_without_a_control_service(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = streamgate_env(tmp_path / "data", free_port(), STREAMGATE__SERVER__CONTROL_PORT=str(free_port()))
    with subprocess.Popen([sys.executable, "-m", "streamgate", "status", "--json", "--watch", "0.2"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            views = [json.loads(proc.stdout.readline()) for _ in range(2)]  # one document per refresh
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    for view in views:
        assert view["registry"] == "none"
        assert {i["role"] for i in view["instances"]} == {"edge", "broker", "farm", "control"}
        assert view["broker"]["up"] is False  # nothing runs: reported, not fatal
    assert views[1]["generated_at"] >= views[0]["generated_at"]


def test_status_tables_say_where_the_view_came_from(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = streamgate_env(tmp_path / "data", free_port(), STREAMGATE__SERVER__CONTROL_PORT=str(free_port()),
                         COLUMNS="160")
    out = subprocess.run([sys.executable, "-m", "streamgate", "status"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Instances (registry: none)" in out.stdout
    assert "built locally (control at" in out.stdout and "unreachable" in out.stdout
    assert "Scaling:" in out.stdout


def test_status_with_an_unreachable_url_fails_plainly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = streamgate_env(tmp_path / "data", free_port())
    url = f"http://127.0.0.1:{free_port()}"
    out = subprocess.run([sys.executable, "-m", "streamgate", "status", "--url", url], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"{url} unreachable" in out.stderr and "Traceback" not in out.stderr
