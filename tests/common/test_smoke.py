from streamgate.common.config import load_config


def test_defaults_load_without_a_file() -> None:
    assert load_config(None, env={}).server.port == 8080
