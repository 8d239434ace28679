"""Redis stopped and restarted under load behind two fleet-mode edges (issue 14).

Uploads keep going through both edges while Redis (their shared upload state, locks and
catalog) is stopped for a few seconds and started again on its append-only file. After it:
every acknowledged byte is kept (no HEAD reports less than a 204 acknowledged), every upload
completes with the checksum of what was sent, and during the outage no request got a 2xx that
was not true or a 500.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, streamgate_env
from support import wait_until

TUS = {"Tus-Resumable": "1.0.0"}
CHUNK = 64 * 1024


class Redis:
    """A redis-server of this test's own (the session's is shared), durable across its restart."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.sock = workdir / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.proc = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", str(self.sock), "--unixsocketperm", "700", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.sock.exists(), timeout=10, what="redis-server socket")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        wait_until(lambda: not self.sock.exists(), timeout=10, what="redis-server to remove its socket")


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(tmp_path / "redis")
    server.workdir.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _request(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        conn.close()


class Uploader(threading.Thread):
    def __init__(self, ports: list[int], data: bytes, deadline: float) -> None:
        super().__init__(daemon=True)
        self.ports, self.data, self.deadline = ports, data, deadline
        self.acknowledged = 0
        self.path = ""
        self.statuses: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._upload()
        except BaseException as exc:
            self.error = exc

    def _call(self, turn: int, method: str, path: str, headers: dict[str, str],
              body: bytes = b"") -> tuple[int, dict[str, str]] | None:
        try:
            status, got = _request(self.ports[turn % len(self.ports)], method, path, {**TUS, **headers}, body)
        except OSError:
            return None
        self.statuses.append(status)
        return status, got

    def _upload(self) -> None:
        turn = 0
        while not self.path:
            answer = self._call(turn, "POST", "/api/v1/uploads", {"Upload-Length": str(len(self.data))})
            if answer and answer[0] == 201:
                self.path = "/api/v1/uploads/" + answer[1]["Location"].rsplit("/", 1)[1]
            turn += 1
            assert time.monotonic() < self.deadline
        while True:
            turn += 1  # every request to the other edge: no sticky sessions
            assert time.monotonic() < self.deadline, "the upload did not finish in time"
            answer = self._call(turn, "HEAD", self.path, {})
            if not answer or answer[0] != 200:
                time.sleep(0.2)
                continue
            offset = int(answer[1]["Upload-Offset"])
            assert offset >= self.acknowledged, f"acknowledged {self.acknowledged}, HEAD said {offset}"
            if offset == len(self.data):
                return
            answer = self._call(turn + 1, "PATCH", self.path, {
                "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
                self.data[offset:offset + CHUNK])
            if answer and answer[0] == 204:
                self.acknowledged = max(self.acknowledged, int(answer[1]["Upload-Offset"]))
            time.sleep(0.03)


def test_uploads_through_two_fleet_edges_survive_a_redis_restart(redis: Redis, tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    procs = []
    for n, port in enumerate(ports):
        log = open(tmp_path / f"edge{n}.log", "wb")  # noqa: SIM115 (closed below)
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "streamgate", "edge", "--port", str(port)],
            env=streamgate_env(tmp_path / "data", port,  # one shared data dir, as a fleet shares storage
                               REDIS_URL=f"unix://{redis.sock}",
                               STREAMGATE__METRICS__ENABLED="false", STREAMGATE__UPLOADS__RESUBMIT_INTERVAL="1h"),
            stdout=log, stderr=subprocess.STDOUT), log))
    try:
        for port in ports:
            wait_until(lambda p=port: _healthy(p), timeout=30, what=f"edge on {port}")
        deadline = time.monotonic() + 90
        uploaders = [Uploader(ports, hashlib.shake_256(bytes([n])).digest(1_500_000), deadline) for n in range(3)]
        for uploader in uploaders:
            uploader.start()
        wait_until(lambda: all(u.acknowledged > 0 for u in uploaders), timeout=30, what="uploads under way")
        redis.stop()
        time.sleep(3)  # the outage: the edges answer without their state store
        during = sum(len(u.statuses) for u in uploaders)
        redis.start()
        for uploader in uploaders:
            uploader.join(max(1.0, deadline - time.monotonic()))
            assert uploader.error is None, uploader.error
            assert not uploader.is_alive()
        # Every byte whole: each upload's video carries the checksum of what was sent.
        for uploader in uploaders:
            video_id = uploader.path.rsplit("/", 1)[1]
            conn = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=15)
            conn.request("GET", f"/api/v1/videos/{video_id}")
            body = conn.getresponse().read()
            conn.close()
            assert json.loads(body)["sha256"] == hashlib.sha256(uploader.data).hexdigest()
        statuses = [s for u in uploaders for s in u.statuses]
        assert during > 0 and 500 not in statuses, sorted(set(statuses))
        assert 503 in statuses, "the outage was never seen"
    finally:
        for proc, log in procs:
            proc.terminate()
            proc.wait(30)
            log.close()


def _healthy(port: int) -> bool:
    try:
        return _request(port, "GET", "/health", {})[0] == 200
    except OSError:
        return False
