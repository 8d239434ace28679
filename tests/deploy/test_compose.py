"""compose.yaml: valid against the Compose specification, and every StreamGate service's
environment and command are ones StreamGate accepts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from deploy_support import REPO

from streamgate.common.config import load_config
from streamgate.control.cli import build_parser

COMPOSE = REPO / "compose.yaml"


def test_compose_file_validates_against_the_compose_spec() -> None:
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert tool, "check-jsonschema is in the test extra (pip install -e '.[test]')"
    result = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def streamgate_services() -> dict[str, dict[str, object]]:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    return {name: s for name, s in services.items() if s.get("image", "").startswith("streamgate")}


def test_the_fleet_has_the_roles_it_needs() -> None:
    roles = sorted(s["command"][0] for s in streamgate_services().values())
    assert roles == ["broker", "broker", "control", "edge", "edge", "farm"]
    names = set(yaml.safe_load(COMPOSE.read_text())["services"])
    assert {"redis", "seaweedfs", "consul"} <= names


@pytest.mark.parametrize("service", sorted(streamgate_services()))
def test_each_service_config_and_command_are_accepted(service: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yaml: the image bakes none in
    spec = streamgate_services()[service]
    env = {k: str(v) for k, v in spec["environment"].items()}
    env["STREAMGATE__AUTH__SECRET"] = "x" * 32  # the ${...:?} the .env file provides
    config = load_config(None, env=env)
    assert config.deployment.mode == "fleet" and config.registry.type == "consul"
    assert config.cache.redis_url == "redis://redis:6379/0"
    args = build_parser().parse_args(spec["command"])
    assert args.verb == spec["command"][0]
    for name in ("S3_ENDPOINT", "S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert name in env


def test_the_fleet_stores_in_s3_and_no_two_roles_share_a_data_volume() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    named = set(compose["volumes"])
    owners: dict[str, str] = {}
    for name, spec in streamgate_services().items():
        env = {k: str(v) for k, v in spec["environment"].items()}
        env["STREAMGATE__AUTH__SECRET"] = "x" * 32
        storage = load_config(None, env=env).storage
        assert storage.backend == "s3" and storage.s3.bucket == "streamgate", name
        assert storage.s3.endpoint == "http://seaweedfs:8333" and storage.s3.create_bucket, name
        mounts = [str(v).split(":") for v in spec.get("volumes", [])]
        (source,) = [m[0] for m in mounts if len(m) > 1 and m[1] == "/var/lib/streamgate"]
        # A named volume of its own: an anonymous one (no source) would also be private, but the
        # file names each one so `docker compose down` and `up` keep the caches.
        assert source in named, f"{name} mounts {source}, not a declared volume"
        assert source not in owners, f"{name} and {owners.get(source)} share {source}"
        owners[source] = name
    assert "media" not in named
