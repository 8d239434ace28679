"""The opt-in run against a real Consul agent (``pytest -m consul``)."""

from __future__ import annotations

import shutil

import pytest


@pytest.mark.consul
def test_real_consul_agent_is_on_path() -> None:
    """Under ``-m consul`` every test taking ``consul_agent`` also runs against ``consul agent -dev``."""
    if shutil.which("consul") is None:
        pytest.skip("no consul binary on PATH: the consul-marked variants did not run")
    assert shutil.which("consul")
