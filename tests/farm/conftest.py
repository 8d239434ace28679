"""Fixtures of the farm service tests: a short data dir (ipc:// paths have a 107-byte limit), a fast config
(100 ms heartbeats), an in-process broker, broker and pool subprocesses, and a check that every
test leaves no farm process and no /dev/shm segment behind."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import processes_titled, shm_segments, terminate, wait_until

from streamgate.common.config import Config, config_from_tree
from streamgate.common.protocol import JobSpec

RUNNERS = Path(__file__).resolve().parent / "runners.py"


def runner(name: str) -> str:
    """A worker runner spec for the functions in tests/farm/runners.py."""
    return f"{RUNNERS}:{name}"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def farm_tree(data_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {
        "storage": {"data_dir": str(data_dir), "min_free_space": 0},
        # Expiry 0.5 s: short tests, yet tolerant of a machine busy with others' benchmarks.
        # Stall watchdog off the path of gated runs; the stall tests set their own.
        "broker": {"heartbeat_interval": "100ms", "heartbeat_liveness": 5, "stall_timeout": "30s",
                   "max_retries": 2},
        "transcoder": {
            "worker_pool_size": 1, "task_timeout": "60s", "health_check_interval": "500ms",
            "drain_timeout": "200ms", "abort_grace": "3s", "ladder": [240], "preset": "ultrafast",
            "segment_duration": "1s",
            "scaling_policy": {"min_workers": 1, "max_workers": 1, "target_queue_len": 1,
                               "scale_up_threshold": 1.0, "scale_down_threshold": 0.5,
                               "check_interval": "200ms"},
        },
        "metrics": {"enabled": False},
    }
    return _merge(tree, sections)


class Farm:
    """One test's farm setting: its data dir and config, and helpers to build jobs."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.tree = farm_tree(data_dir)
        self.config = config_from_tree(self.tree)
        self._n = 0

    def configure(self, **sections: dict[str, Any]) -> Config:
        self.tree = _merge(self.tree, sections)
        self.config = config_from_tree(self.tree)
        return self.config

    def config_file(self) -> Path:
        path = self.data_dir / "config.yaml"
        path.write_text(yaml.safe_dump(self.tree))
        return path

    def job(self, source: Path, *, job_id: str | None = None, priority: int = 0,
            **settings: Any) -> JobSpec:
        self._n += 1
        job_id = job_id or f"v{self._n}"
        return JobSpec(job_id=job_id, source=str(source),
                       out_dir=str(self.data_dir / "media" / job_id), priority=priority,
                       settings=settings)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("STREAMGATE") and k != "PROMETHEUS_MULTIPROC_DIR"}
        env["STREAMGATE_CONFIG"] = str(self.config_file())
        return env


@pytest.fixture
def farm() -> Iterator[Farm]:
    # Short: ipc:// socket paths must fit sun_path (108 bytes).
    data_dir = Path(tempfile.mkdtemp(prefix="sgfarm-", dir="/tmp"))
    try:
        yield Farm(data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


TOKEN_ENV = "SGFARM_TEST_TOKEN"


def _processes_with(token: str) -> list[tuple[int, str]]:
    """Live processes started under this test (they inherit the token in their environment)."""
    found = []
    needle = f"{TOKEN_ENV}={token}".encode()
    for pid, title in processes_titled("streamgate"):
        if pid == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append((pid, title))
    return found


@pytest.fixture
def no_leaks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every process and shared-memory segment a test starts is gone when it ends (the farm
    service's modules use it for every test: ``pytestmark = pytest.mark.usefixtures("no_leaks")``)."""
    token = f"{os.getpid()}-{time.monotonic_ns()}"
    monkeypatch.setenv(TOKEN_ENV, token)
    shm_before = shm_segments()
    yield
    wait_until(lambda: not _processes_with(token), timeout=15,
               what="processes started by the test to exit")
    # Others may run transcodes on this machine meanwhile: a new segment that a process outside
    # this test maps is theirs; ours are unmapped (leaked) or mapped by our processes.
    wait_until(lambda: not {s for s in shm_segments() - shm_before if not _mapped_by_others(s, token)},
               timeout=10, what="/dev/shm segments of the test to be unlinked")


def _mapped_by_others(segment: str, token: str) -> bool:
    needle = f"/dev/shm/{segment}"
    mine = f"{TOKEN_ENV}={token}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "maps").read_text() and mine not in (entry / "environ").read_bytes().split(b"\0"):
                return True
        except OSError:
            continue
    return False


@pytest.fixture
def clip(video_factory: Callable[..., Path]) -> Path:
    """1 s, 320x240, 15 fps with audio: a real transcode in well under a second."""
    return video_factory("farm.mp4", seconds=1.0, width=320, height=240, fps=15)


@pytest.fixture
def not_a_video(tmp_path: Path) -> Path:
    path = tmp_path / "notes.mp4"
    path.write_bytes(b"this is a text file, not a video\n" * 64)
    return path


class RunningBroker:
    def __init__(self, broker: Any, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
        self.broker = broker
        self.stop_event = stop
        self.task = task

    async def stop(self) -> None:
        if not self.task.done():
            self.stop_event.set()
            await self.task
            await self.broker.close()


@pytest.fixture
async def start_broker(farm: Farm) -> AsyncIterator[Callable[[], Any]]:
    """Factory: an in-process broker on the farm's config; stopped at teardown."""
    from streamgate.farm.broker import Broker
    from streamgate.farm.journal import SqliteJournal

    running: list[RunningBroker] = []

    async def start() -> RunningBroker:
        broker = Broker(farm.config, SqliteJournal(farm.config.journal_path))
        await broker.start()
        stop = asyncio.Event()
        task = asyncio.create_task(broker.run(stop))
        handle = RunningBroker(broker, stop, task)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        await handle.stop()


@pytest.fixture
async def client(farm: Farm) -> AsyncIterator[Any]:
    from streamgate.common.broker_client import BrokerClient

    c = BrokerClient(farm.config.broker_endpoints, timeout_s=3.0)
    yield c
    await c.close()


class Service:
    """A ``streamgate broker`` or ``streamgate farm`` subprocess."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@pytest.fixture
def start_service(farm: Farm) -> Iterator[Callable[..., Service]]:
    """Factory: ``streamgate <role>`` as a subprocess on the farm's config file."""
    started: list[Service] = []

    def start(role: str, *args: str, env: dict[str, str] | None = None) -> Service:
        log = farm.data_dir / f"{role}-{len(started)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "streamgate", role, *args],
                                    env={**farm.env(), **(env or {})}, stdout=out,
                                    stderr=subprocess.STDOUT)
        service = Service(proc, log)
        started.append(service)
        return service

    yield start
    for service in started:
        if os.environ.get("SGFARM_KEEP_LOGS"):
            shutil.copy(service.log, os.environ["SGFARM_KEEP_LOGS"])
        terminate(service.proc)


def pids_titled(fragment: str) -> list[int]:
    return [pid for pid, title in processes_titled("streamgate") if fragment in title]


def elapsed_since(t0: float) -> float:
    return time.monotonic() - t0


class RawWorker:
    """A worker at the wire level (a real DEALER speaking the protocol by hand): lets a test
    be the worker that goes silent, stalls or answers late."""

    def __init__(self, endpoint: str, worker_id: str) -> None:
        import msgspec
        import zmq
        import zmq.asyncio

        from streamgate.common.protocol import BrokerMessage

        self.worker_id = worker_id
        self._ctx = zmq.asyncio.Context()
        self.sock = self._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, worker_id.encode())
        self.sock.connect(endpoint)
        self._decoder = msgspec.msgpack.Decoder(BrokerMessage)

    async def send(self, message: Any) -> None:
        from streamgate.common.protocol import WORKER, encode

        await self.sock.send_multipart([WORKER, encode(message)])

    async def ready(self, **fields: Any) -> None:
        from streamgate.common.protocol import Ready

        await self.send(Ready(worker_id=self.worker_id, pid=os.getpid(), **fields))

    async def expect(self, kind: type, timeout: float = 5.0, *, heartbeat: bool = False) -> Any:
        """The next message of ``kind`` (heartbeats skipped; answered when ``heartbeat``)."""
        from streamgate.common.protocol import Heartbeat

        async with asyncio.timeout(timeout):
            while True:
                frames = await self.sock.recv_multipart()
                message = self._decoder.decode(frames[1])
                if isinstance(message, kind):
                    return message
                if isinstance(message, Heartbeat) and heartbeat:
                    await self.send(Heartbeat())

    def close(self) -> None:
        self.sock.close(linger=0)
        self._ctx.term()


class EventLog:
    """Collects the broker's events in the background; ``wait`` polls them with a deadline."""

    def __init__(self, client: Any) -> None:
        self.stream = client.events()
        self.events: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> EventLog:
        await self.stream.live()
        self._task = asyncio.create_task(self._collect())
        return self

    async def _collect(self) -> None:
        async for event in self.stream:
            self.events.append(event)

    def of(self, kind: type, job_id: str | None = None) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and (job_id is None or e.job_id == job_id)]

    async def wait(self, kind: type, job_id: str | None = None, *, count: int = 1,
                   timeout: float = 20.0) -> list[Any]:
        from support import async_wait_until

        async def enough() -> bool:
            return len(self.of(kind, job_id)) >= count

        await async_wait_until(enough, timeout=timeout, what=f"{count} {kind.__name__} event(s)")
        return self.of(kind, job_id)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.stream.close()


@pytest.fixture
async def events(client: Any) -> AsyncIterator[Callable[[], Any]]:
    logs: list[EventLog] = []

    async def start() -> EventLog:
        log = await EventLog(client).start()
        logs.append(log)
        return log

    yield start
    for log in logs:
        await log.close()


@pytest.fixture
def raw_worker(farm: Farm) -> Iterator[Callable[[str], RawWorker]]:
    """Factory: a :class:`RawWorker` on the farm's backend; closed at teardown."""
    made: list[RawWorker] = []

    def make(worker_id: str) -> RawWorker:
        worker = RawWorker(farm.config.broker_endpoints.backend, worker_id)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.close()


@pytest.fixture(name="runner")
def runner_fixture() -> Callable[[str], str]:
    return runner


class RunningPool:
    def __init__(self, pool: Any, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
        self.pool = pool
        self.stop_event = stop
        self.task = task

    def pids(self) -> list[int]:
        return [w.pid for w in self.pool.workers if w.process.exitcode is None and not w.retiring]

    async def stop(self) -> None:
        if not self.task.done():
            self.stop_event.set()
        await self.task


@pytest.fixture
async def start_pool(farm: Farm) -> AsyncIterator[Callable[..., Any]]:
    """Factory: an in-process pool (its workers are real spawned processes) on the farm's config,
    with a runner from tests/farm/runners.py; stopped (drained) at teardown."""
    from streamgate.common.broker_client import BrokerClient
    from streamgate.farm.pool import Pool

    running: list[tuple[RunningPool, Any]] = []

    async def start(runner_name: str = "real", *, wait_ready: bool = True) -> RunningPool:
        client = BrokerClient(farm.config.broker_endpoints, timeout_s=0.5)
        pool = Pool(farm.config, runner=runner(runner_name), client=client)
        stop = asyncio.Event()
        handle = RunningPool(pool, stop, asyncio.create_task(pool.run(stop)))
        running.append((handle, client))
        if wait_ready:
            from support import async_wait_until

            async def all_idle() -> bool:
                return bool(pool.workers) and all(w.state == "idle" for w in pool.workers)

            await async_wait_until(all_idle, timeout=30, what="pool workers to connect")
        return handle

    yield start
    for handle, client in running:
        await handle.stop()
        await client.close()
