"""The typed config: defaults, YAML, units, environment overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamgate.common.config import ConfigError, config_from_tree, dump_config, load_config
from streamgate.common.units import Bytes, Seconds

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_repository_config_is_valid() -> None:
    config = load_config(REPO / "config.yaml", env={})
    assert config.server.port == 8080
    assert config.storage.data_dir == "./data"
    assert config.transcoder.scaling_policy.max_workers >= config.transcoder.scaling_policy.min_workers


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yaml here
    config = load_config(None, env={})
    assert config.deployment.mode == "single"
    assert config.transcoder.max_queue_size == 1000
    assert config.transcoder.task_timeout == 3600


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("30s", 30), ("10m", 600), ("1h", 3600), ("1d", 86400), (45, 45), ("2.5s", 2.5),
])
def test_durations(text: object, seconds: float) -> None:
    config = config_from_tree({"transcoder": {"task_timeout": text}})
    assert config.transcoder.task_timeout == pytest.approx(seconds)
    assert isinstance(config.transcoder.task_timeout, Seconds)


@pytest.mark.parametrize(("text", "size"), [
    ("512MiB", 512 * 2**20), ("4GiB", 4 * 2**30), ("10MB", 10**7), ("1KiB", 1024), (1000, 1000),
])
def test_sizes(text: object, size: int) -> None:
    config = config_from_tree({"uploads": {"max_size": text}})
    assert config.uploads.max_size == size
    assert isinstance(config.uploads.max_size, Bytes)


@pytest.mark.parametrize(("tree", "message"), [
    ({"transcoder": {"scaling_policy": {"max_workers": "many"}}}, "transcoder.scaling_policy.max_workers"),
    ({"transcoder": {"scaling_policy": {"check_interval": "5 parsecs"}}}, "transcoder.scaling_policy.check_interval"),
    ({"transcoder": {"worker_pool_sise": 3}}, "transcoder.worker_pool_sise: unknown key"),
    ({"nonsense": {}}, "nonsense: unknown key"),
    ({"server": {"port": 70000}}, "server.port"),
    ({"uploads": {"max_size": "lots"}}, "uploads.max_size"),
    ({"deployment": {"mode": "cluster"}}, "deployment.mode"),
    ({"transcoder": {"scaling_policy": {"min_workers": 9, "max_workers": 2}}}, "scaling_policy.min_workers"),
    ({"deployment": {"mode": "fleet"}}, "cache.redis_url"),
])
def test_errors_name_the_key(tree: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_tree(tree)
    assert message in str(info.value)


def test_bad_yaml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "server: [unclosed\n"), env={})
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(write(tmp_path, "- a list\n"), env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", env={})


def test_operator_environment_names_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {port: 9000}\nauth: {required: true}\n")
    env = {
        "DEPLOYMENT_MODE": "fleet", "SERVICE_NAME": "transcoder", "SERVER_PORT": "9100",
        "REGISTRY_TYPE": "consul", "CONSUL_ADDRESS": "http://10.0.0.5:8500",
        "TRANSCODER_WORKERS": "6", "TRANSCODER_MAX_TASKS": "12", "REDIS_URL": "redis://r:6379/0",
        "STREAMGATE_DATA_DIR": "/srv/streamgate", "AUTH_REQUIRED": "false",
    }
    config = load_config(path, env=env)
    assert config.deployment.mode == "fleet"
    assert config.deployment.service_name == "transcoder"
    assert config.server.port == 9100
    assert config.registry.type == "consul"
    assert config.registry.consul_address == "http://10.0.0.5:8500"
    assert config.transcoder.worker_pool_size == 6
    assert config.transcoder.max_concurrent_tasks == 12
    assert config.cache.redis_url == "redis://r:6379/0"
    assert config.storage.data_dir == "/srv/streamgate"
    assert config.auth.required is False


def test_generic_override_and_config_path_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, "transcoder: {preset: medium}\n")
    env = {"STREAMGATE_CONFIG": str(path), "STREAMGATE__TRANSCODER__SCALING_POLICY__MAX_WORKERS": "8",
           "STREAMGATE__TRANSCODER__TASK_TIMEOUT": "90m"}
    config = load_config(None, env=env)
    assert config.transcoder.preset == "medium"
    assert config.transcoder.scaling_policy.max_workers == 8
    assert config.transcoder.task_timeout == 5400


def test_generic_overrides_of_text_keys_stay_text() -> None:
    """A secret or a path that looks like a number is still the text the operator wrote."""
    env = {"STREAMGATE__AUTH__SECRET": "12345", "STREAMGATE__STORAGE__DATA_DIR": "007",
           "STREAMGATE__CACHE__REDIS_PREFIX": "true", "STREAMGATE__AUTH__REQUIRED": "true",
           "STREAMGATE__SERVER__PORT": "8099"}
    config = load_config(None, env=env)
    assert config.auth.secret == "12345"
    assert config.storage.data_dir == "007"
    assert config.cache.redis_prefix == "true"
    assert config.auth.required is True and config.server.port == 8099


def test_bad_environment_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match="server.port"):
        load_config(None, env={"SERVER_PORT": "eighty"})
    with pytest.raises(ConfigError, match="transcoder.worker_pool_size"):
        load_config(None, env={"TRANSCODER_WORKERS": "-"})


def test_dump_round_trips(tmp_path: Path) -> None:
    config = config_from_tree({"transcoder": {"task_timeout": "90m"}, "uploads": {"max_size": "2GiB"}})
    text = dump_config(config)
    assert "task_timeout: 90m" in text
    assert "max_size: 2GiB" in text
    assert load_config(write(tmp_path, text), env={}) == config


def test_fleet_endpoints_are_tcp_single_node_ipc() -> None:
    single = config_from_tree({"storage": {"data_dir": "/tmp/sg"}})
    assert single.broker_endpoints.backend.startswith("ipc:///tmp/sg/run/")
    fleet = config_from_tree({"deployment": {"mode": "fleet"}, "cache": {"redis_url": "redis://x"},
                              "broker": {"host": "10.1.2.3"}})
    assert fleet.broker_endpoints.frontend == "tcp://10.1.2.3:5570"
