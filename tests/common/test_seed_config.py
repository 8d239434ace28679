"""The seed platform's config.yaml and environment names, accepted as its operators wrote them."""

from __future__ import annotations

from pathlib import Path

import pytest
from seed_support import SEED_YAML

from streamgate.common.config import ENV_OVERRIDES, ConfigError, config_from_tree, load_config
from streamgate.common.seed import SEED_SERVICES, notices
from streamgate.control.cli import VERBS


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_the_seed_config_loads_as_written(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SEED_YAML), env={})
    assert config.deployment.mode == "single"
    assert config.deployment.service_name == "api-gateway"
    assert config.server.read_timeout == 30 and config.server.write_timeout == 30
    assert config.server.edge_read_timeout(config.edge) == 30.0
    assert config.grpc.port == 9090
    assert config.eventbus.type == "memory" and config.eventbus.nats.url == "nats://localhost:4222"
    assert config.registry.type == "consul" and config.registry.consul_address == "localhost:8500"
    assert config.registry.service_prefix == "streamgate"
    assert config.transcoder.task_timeout == 3600
    assert config.transcoder.scaling_policy.target_queue_len == 10


@pytest.mark.parametrize(("seed", "ours"), [("monolith", "single"), ("microservice", "fleet"),
                                            ("single", "single"), ("fleet", "fleet")])
def test_both_spellings_of_the_mode(seed: str, ours: str) -> None:
    tree = {"deployment": {"mode": seed}, "cache": {"redis_url": "redis://r:6379/0"}}
    assert config_from_tree(tree).deployment.mode == ours


def test_timeouts_fall_back_to_client_timeout() -> None:
    config = config_from_tree({"edge": {"client_timeout": "45s"}, "server": {"write_timeout": "5s"}})
    assert config.server.edge_read_timeout(config.edge) == 45.0
    assert config.server.edge_write_timeout(config.edge) == 5.0


def test_every_seed_environment_name_is_understood(tmp_path: Path) -> None:
    env = {"DEPLOYMENT_MODE": "microservice", "SERVICE_NAME": "monitor", "SERVER_PORT": "8181",
           "GRPC_PORT": "9191", "EVENTBUS_TYPE": "nats", "NATS_URL": "nats://bus:4222",
           "REGISTRY_TYPE": "consul", "CONSUL_ADDRESS": "consul.internal:8500",
           "TRANSCODER_WORKERS": "3", "TRANSCODER_MAX_TASKS": "7", "REDIS_URL": "redis://r:6379/0"}
    # The environment beats the file, the seed's nested consul address included.
    config = load_config(write(tmp_path, SEED_YAML), env=env)
    assert (config.deployment.mode, config.deployment.service_name) == ("fleet", "monitor")
    assert (config.server.port, config.grpc.port) == (8181, 9191)
    assert (config.eventbus.type, config.eventbus.nats.url) == ("nats", "nats://bus:4222")
    assert (config.registry.type, config.registry.consul_address) == ("consul", "consul.internal:8500")
    assert (config.transcoder.worker_pool_size, config.transcoder.max_concurrent_tasks) == (3, 7)
    assert {name for name in env} <= set(ENV_OVERRIDES)


def test_the_nine_seed_services_map_to_roles() -> None:
    assert len(SEED_SERVICES) == 9
    assert set(SEED_SERVICES.values()) == {"edge", "farm", "broker", "control"}
    assert all(role in VERBS for role in SEED_SERVICES.values())
    for name in SEED_SERVICES:
        assert config_from_tree({"deployment": {"service_name": name}}).deployment.service_name == name


def test_a_service_name_that_is_no_seed_service_points_at_the_prefix_key() -> None:
    with pytest.raises(ConfigError, match=r"deployment\.service_name: 'sg-eu1' is not one of the seed's "
                                          r"services.*registry\.service_prefix"):
        config_from_tree({"deployment": {"service_name": "sg-eu1"}})
    assert config_from_tree({"registry": {"service_prefix": "sg-eu1"}}).registry.service_prefix == "sg-eu1"


def test_consul_address_spellings() -> None:
    assert config_from_tree({"registry": {"consul_address": "a:1"}}).registry.consul_address == "a:1"
    assert config_from_tree({"registry": {"consul": {"address": "b:2"}}}).registry.consul_address == "b:2"
    with pytest.raises(ConfigError, match=r"registry\.consul\.address: contradicts"):
        config_from_tree({"registry": {"consul_address": "a:1", "consul": {"address": "b:2"}}})
    with pytest.raises(ConfigError, match=r"registry\.consul\.token: unknown key"):
        config_from_tree({"registry": {"consul": {"token": "x"}}})


def test_keys_done_differently_get_one_line_each(tmp_path: Path) -> None:
    lines = notices(load_config(write(tmp_path, SEED_YAML), env={}))
    assert len(lines) == 2
    assert lines[0].startswith("grpc.port 9090: StreamGate has no gRPC")
    assert lines[1].startswith("eventbus.type memory:") and "ZeroMQ" in lines[1]
    nats = notices(config_from_tree({"eventbus": {"type": "nats", "nats": {"url": "nats://x:4222"}}}))
    assert len(nats) == 1 and "publishes nothing to NATS" in nats[0]
    assert notices(config_from_tree({})) == []


def test_a_role_verb_that_is_not_the_service_names_role_is_said() -> None:
    config = config_from_tree({"deployment": {"service_name": "transcoder"}})
    assert notices(config, "farm") == []
    (line,) = notices(config, "edge")
    assert line == "deployment.service_name transcoder is the farm role, but the command runs edge: running edge"
    assert notices(config, "run") == [] and notices(config, "config") == []
