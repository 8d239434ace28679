"""Fixtures of the control-plane room: a Consul agent (the stand-in, or a real one under -m consul)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import wait_until

sys.path.append(str(Path(__file__).parent))
from agent_api import Agent, free_port  # noqa: E402
from consul_standin import ConsulStandin  # noqa: E402


def _real_agent() -> Iterator[Agent]:
    binary = shutil.which("consul")
    if binary is None:
        pytest.skip("no consul binary on PATH (the consul marker runs against a real agent)")
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen([binary, "agent", "-dev", f"-http-port={port}", "-dns-port=-1",
                                 "-grpc-port=-1", "-serf-lan-port", str(free_port()),
                                 "-serf-wan-port", str(free_port()), "-server-port", str(free_port()),
                                 f"-data-dir={data}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        agent = Agent(f"http://127.0.0.1:{port}")
        try:
            def leader() -> bool:
                try:
                    return bool(agent.get("/v1/status/leader"))
                except OSError:
                    return False

            wait_until(leader, timeout=30, what="a consul dev agent with a leader")
            yield agent
        finally:
            proc.terminate()
            proc.wait(30)


# The real-agent variant exists only where a consul binary does (and is selected by -m consul);
# tests/control/test_consul_agent.py says plainly when it is skipped.
AGENT_PARAMS = ["standin"] + ([pytest.param("agent", marks=pytest.mark.consul)] if shutil.which("consul") else [])


@pytest.fixture(params=AGENT_PARAMS)
def consul_agent(request: pytest.FixtureRequest) -> Iterator[Agent]:
    """The Consul stand-in; under ``-m consul`` also a real ``consul agent -dev`` when one is on PATH."""
    if request.param == "agent":
        yield from _real_agent()
        return
    standin = ConsulStandin().start()
    try:
        yield Agent(standin.address, standin)
    finally:
        standin.stop()


@pytest.fixture
def standin() -> Iterator[ConsulStandin]:
    """The stand-in alone, for tests that reach into its state (fault injection)."""
    agent = ConsulStandin().start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def make_standin() -> Iterator[Callable[[int], ConsulStandin]]:
    """Start a stand-in on a given port (e.g. one a role has been failing to reach)."""
    started: list[ConsulStandin] = []

    def make(port: int) -> ConsulStandin:
        agent = ConsulStandin(port).start()
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop()
