"""The seed's config.yaml verbatim: `config check` passes it, `streamgate run` serves with it, and a
seed service name in a fleet runs the StreamGate role doing that job."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from conftest import free_port, streamgate_env
from seed_support import SEED_YAML
from support import descendants_of, terminate, title_of, wait_healthy, wait_until


def seed_file(tmp_path: Path) -> Path:
    path = tmp_path / "seed-config.yaml"
    path.write_text(SEED_YAML)
    return path


def test_config_check_passes_the_seed_file_and_says_what_differs(tmp_path: Path) -> None:
    env = streamgate_env(tmp_path / "data", free_port(), STREAMGATE_CONFIG=str(seed_file(tmp_path)))
    result = subprocess.run([sys.executable, "-m", "streamgate", "config", "check"], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "mode: single" in result.stdout and "service_name: api-gateway" in result.stdout
    assert result.stderr.count("grpc.port 9090: StreamGate has no gRPC") == 1
    assert result.stderr.count("eventbus.type memory: ") == 1


def test_run_starts_with_the_seed_file_and_answers_health(run_platform, standin, tmp_path: Path) -> None:
    # The file's Consul (localhost:8500) is replaced through the seed's own CONSUL_ADDRESS name,
    # so the test talks to its stand-in only; TRANSCODER_WORKERS keeps the farm small.
    platform = run_platform(STREAMGATE_CONFIG=str(seed_file(tmp_path)), CONSUL_ADDRESS=standin.address,
                            TRANSCODER_WORKERS="1")
    with urllib.request.urlopen(platform.url + "/health", timeout=5) as response:
        assert response.status == 200 and json.loads(response.read())["status"] == "ok"
    # Registered under the Consul prefix, not under the seed service name.
    names = wait_until(lambda: {s["Service"] for s in standin.snapshot()["services"].values()}
                       >= {"streamgate-edge", "streamgate-broker", "streamgate-farm", "streamgate-control"}
                       and {s["Service"] for s in standin.snapshot()["services"].values()},
                       timeout=30, what="every role registered in the stand-in")
    assert not any(name.startswith("api-gateway") for name in names)
    log = platform.log.read_text()
    # One line per differing key for the whole node, not one per process the supervisor starts.
    assert log.count("grpc.port 9090: StreamGate has no gRPC") == 1, log
    assert "api-gateway is the edge here" in log


def test_a_seed_service_name_in_a_fleet_runs_that_role_alone(tmp_path: Path, redis_url: str) -> None:
    control_port = free_port()
    env = streamgate_env(tmp_path / "data", free_port(), DEPLOYMENT_MODE="microservice",
                         SERVICE_NAME="monitor", REDIS_URL=redis_url, REGISTRY_TYPE="none",
                         STREAMGATE__SERVER__CONTROL_PORT=str(control_port))
    log = tmp_path / "monitor.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamgate", "run"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{control_port}/health", log, timeout=60,
                     what="the control role's /health")
        assert "running the control role" in log.read_text()
        # The role itself, no supervisor: no broker, farm or edge under it.
        titles = [title_of(p) for p in descendants_of(proc.pid)]
        assert not any(role in t for t in titles for role in ("broker", "farm", "streamgate edge")), titles
        assert "streamgate run" not in title_of(proc.pid)
    finally:
        assert terminate(proc, 30) == 0
