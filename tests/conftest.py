"""Fixtures shared by the whole suite: real redis-server, free ports, generated videos, a running node."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from storage_support import SeaweedFS, start_seaweedfs, stop_seaweedfs
from support import terminate, wait_healthy, wait_until

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a unix socket for the session; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make test` (it installs it) or apt-get install redis-server")
    workdir = tmp_path_factory.mktemp("redis")
    sock = workdir / "redis.sock"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: sock.exists() or proc.poll() is not None, timeout=10, what="redis-server socket")
        assert proc.poll() is None, "redis-server exited at start"
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A real SeaweedFS (master, volume, filer, S3 gateway) for the session, its bucket made."""
    proc, server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        stop_seaweedfs(proc, server)


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The session's Redis, flushed before each test that uses it."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    yield redis_server


@pytest.fixture(scope="session")
def video_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Generated clips, made once per parameter set for the session."""
    from streamgate.common.synth import make_video

    root = tmp_path_factory.mktemp("videos")
    made: dict[tuple[tuple[str, object], ...], Path] = {}

    def make(name: str = "clip.mp4", **params: object) -> Path:
        key = (("name", name), *sorted(params.items()))
        if key not in made:
            made[key] = make_video(root / f"{len(made)}-{name}", **params)  # type: ignore[arg-type]
        return made[key]

    return make


@pytest.fixture
def small_video(video_factory: Callable[..., Path]) -> Path:
    """2 s, 320x240, 30 fps H.264 + AAC."""
    return video_factory("small.mp4", seconds=2.0, width=320, height=240)


class Platform:
    """A ``streamgate run`` on a temp data dir and a free port."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, data_dir: Path, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.data_dir = data_dir
        self.log = log

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def streamgate_env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGATE")}
    env.update({"STREAMGATE_DATA_DIR": str(data_dir), "SERVER_PORT": str(port),
                "STREAMGATE_CONFIG": str(REPO / "config.yaml"), "AUTH_REQUIRED": "false",
                "STREAMGATE__SERVER__WORKERS": "1",
                # The origin the tests reach it at: the SIWE domain and the base of built URLs.
                "STREAMGATE__SERVER__PUBLIC_URL": f"http://127.0.0.1:{port}",
                # Platforms started side by side must not fight over the control port.
                "STREAMGATE__SERVER__CONTROL_PORT": str(free_port())})
    env.update(extra)
    return env


@pytest.fixture
def run_platform(tmp_path: Path) -> Iterator[Callable[..., Platform]]:
    """Factory: start ``streamgate run``; every platform started is stopped at teardown."""

    started: list[Platform] = []

    def start(**env_extra: str) -> Platform:
        port = free_port()
        data_dir = tmp_path / f"data{len(started)}"
        log = tmp_path / f"run{len(started)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "streamgate", "run"],
                                    env=streamgate_env(data_dir, port, **env_extra),
                                    stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        platform = Platform(proc, f"http://127.0.0.1:{port}", data_dir, log)
        started.append(platform)

        wait_healthy(proc, platform.url + "/health", log, what="streamgate run /health")
        return platform

    yield start
    for platform in started:
        terminate(platform.proc, 30)
