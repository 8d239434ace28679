"""Uploads against real ``streamgate edge`` processes: a restart, a kill -9 mid-PATCH, two edges
continuing one upload through Redis, and private playback through the edge's fast path."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import free_port, streamgate_env
from support import wait_until

TUS = {"Tus-Resumable": "1.0.0"}


class EdgeProcess:
    def __init__(self, data_dir: Path, log: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamgate", "edge", "--port", str(self.port)],
                env=streamgate_env(data_dir, self.port, STREAMGATE__METRICS__ENABLED="false",
                                   STREAMGATE__UPLOADS__RESUBMIT_INTERVAL="1h", **env),
                stdout=out, stderr=subprocess.STDOUT)
        wait_until(self._healthy, timeout=30, what=f"edge on {self.port}")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"edge exited {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            return request(self, "GET", "/health")[0] == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)


def request(edge: EdgeProcess, method: str, path: str, body: bytes = b"",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture
def edges(tmp_path: Path) -> Iterator[Callable[..., EdgeProcess]]:
    started: list[EdgeProcess] = []

    def start(data_dir: Path | None = None, **env: str) -> EdgeProcess:
        edge = EdgeProcess(data_dir or tmp_path / "data", tmp_path / f"edge{len(started)}.log", **env)
        started.append(edge)
        return edge

    yield start
    for edge in started:
        if edge.proc.poll() is None:
            edge.proc.kill()
            edge.proc.wait(30)


def _payload(size: int) -> bytes:
    return hashlib.shake_256(b"process-test").digest(size)


def _tus_upload(url: str, data_path: Path, stop_at: int | None = None, upload_url: str | None = None,
                **meta: str) -> str:
    from tusclient import client

    with open(data_path, "rb") as stream:
        uploader = client.TusClient(url + "/api/v1/uploads").uploader(
            file_stream=stream, url=upload_url, chunk_size=256 * 1024, upload_checksum=True,
            metadata=meta or {"filename": data_path.name})
        uploader.upload(stop_at)
        return uploader.url  # type: ignore[no-any-return]


def _offset(edge: EdgeProcess, upload_path: str) -> int:
    status, headers, _ = request(edge, "HEAD", upload_path, headers=TUS)
    assert status == 200, status
    return int(headers["Upload-Offset"])


def _video(edge: EdgeProcess, video_id: str) -> dict[str, object]:
    status, _, body = request(edge, "GET", f"/api/v1/videos/{video_id}")
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


def test_upload_survives_an_edge_restart(edges, tmp_path: Path) -> None:
    data = _payload(1_500_000)
    source = tmp_path / "restart.mp4"
    source.write_bytes(data)
    edge = edges()
    url = _tus_upload(edge.url, source, stop_at=768 * 1024)
    edge.stop()
    edge = edges()  # same data dir, new process, new port
    path = "/api/v1/uploads/" + url.rsplit("/", 1)[1]
    assert _offset(edge, path) == 768 * 1024
    _tus_upload(edge.url, source, upload_url=edge.url + path)
    video_id = url.rsplit("/", 1)[1]
    video = _video(edge, video_id)
    assert video["status"] == "queued" and video["sha256"] == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "data" / "sources" / video_id / "source.mp4").read_bytes() == data


def test_kill_9_mid_patch_loses_nothing_acknowledged(edges, tmp_path: Path) -> None:
    data = _payload(6 * 2**20)
    source = tmp_path / "kill.mp4"
    source.write_bytes(data)
    edge = edges()
    status, headers, _ = request(edge, "POST", "/api/v1/uploads", headers={
        **TUS, "Upload-Length": str(len(data)),
        "Upload-Metadata": "filename " + base64.b64encode(b"kill.mp4").decode()})
    assert status == 201
    path = "/api/v1/uploads/" + headers["Location"].rsplit("/", 1)[1]
    sock = socket.create_connection(("127.0.0.1", edge.port))
    try:
        sock.sendall((f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                      "Content-Type: application/offset+octet-stream\r\n"
                      f"Content-Length: {len(data)}\r\n\r\n").encode())
        sock.sendall(data[: 5 * 2**20])  # past one checkpoint, then the edge dies mid-body
        acknowledged = wait_until(lambda: _offset(edge, path), timeout=20, what="a checkpoint")
        edge.stop(signal.SIGKILL)
    finally:
        sock.close()
    partial = tmp_path / "data" / "uploads" / (path.rsplit("/", 1)[1] + ".part")
    assert partial.stat().st_size >= acknowledged  # maybe more, never acknowledged
    edge = edges()
    assert _offset(edge, path) == acknowledged
    _tus_upload(edge.url, source, upload_url=edge.url + path)
    video = _video(edge, path.rsplit("/", 1)[1])
    assert video["status"] == "queued" and video["sha256"] == hashlib.sha256(data).hexdigest()


def test_two_edges_continue_one_upload_through_redis(edges, tmp_path: Path, redis_url: str) -> None:
    data = _payload(1_000_000)
    source = tmp_path / "fleet.mp4"
    source.write_bytes(data)
    a, b = edges(REDIS_URL=redis_url), edges(REDIS_URL=redis_url)
    url = _tus_upload(a.url, source, stop_at=512 * 1024)
    path = "/api/v1/uploads/" + url.rsplit("/", 1)[1]
    assert _offset(b, path) == 512 * 1024  # edge B sees edge A's state: no sticky sessions
    status, headers, body = request(b, "PATCH", path, body=b"x", headers={
        **TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    assert status == 409 and headers["Upload-Offset"] == str(512 * 1024)
    _tus_upload(b.url, source, upload_url=b.url + path)
    video = _video(a, url.rsplit("/", 1)[1])
    assert video["status"] == "queued" and video["sha256"] == hashlib.sha256(data).hexdigest()


def test_private_video_through_the_fast_path(edges, tmp_path: Path) -> None:
    edge = edges()
    status, headers, _ = request(edge, "POST", "/api/v1/uploads", body=b"abc", headers={
        **TUS, "Upload-Length": "3", "Content-Type": "application/offset+octet-stream",
        "Upload-Metadata": "filename " + base64.b64encode(b"p.mp4").decode()
                           + ",visibility " + base64.b64encode(b"private").decode()})
    assert status == 201
    video_id = headers["Location"].rsplit("/", 1)[1]
    media = tmp_path / "data" / "media" / video_id
    media.mkdir(parents=True)
    (media / "master.m3u8").write_text("#EXTM3U\n")
    # Uploaded without a wallet, it has no owner: the one owner rule (edge/access/playback.py)
    # makes it every caller's, on the fast path as on the API.
    status, _, body = request(edge, "GET", f"/videos/{video_id}/master.m3u8")
    assert status == 200 and body == b"#EXTM3U\n"
    status, _, body = request(edge, "POST", f"/api/v1/videos/{video_id}/playback-url")
    assert status == 200
    hls = json.loads(body)["hls_url"]
    signed_path = hls.split(str(edge.port), 1)[1]
    status, _, body = request(edge, "GET", signed_path)
    assert status == 200 and body == b"#EXTM3U\n"
    status, _, _ = request(edge, "GET", signed_path.replace(video_id, "f" * 32))
    assert status == 403


# tus concatenation (issue 17): a partial upload cut by a kill -9 mid-PATCH resumes on the restarted
# edge, and the final upload joins it whole.
_MiB = 2**20
_OFFSET = {"Content-Type": "application/offset+octet-stream"}


def _partial(edge, length: int) -> str:  # type: ignore[no-untyped-def]
    status, headers, body = request(edge, "POST", "/api/v1/uploads", headers={
        **TUS, "Upload-Length": str(length), "Upload-Concat": "partial"})
    assert status == 201, body
    return "/api/v1/uploads/" + headers["Location"].rsplit("/", 1)[1]


def test_a_partial_cut_by_kill_9_resumes_and_the_final_joins_it(edges, tmp_path: Path) -> None:
    data = hashlib.shake_256(b"concat-kill").digest(12 * _MiB + 77)
    halves = [data[:6 * _MiB], data[6 * _MiB:]]
    edge = edges()
    paths = [_partial(edge, len(h)) for h in halves]
    status, _, body = request(edge, "PATCH", paths[0], body=halves[0],
                              headers={**TUS, **_OFFSET, "Upload-Offset": "0"})
    assert status == 204, body
    sock = socket.create_connection(("127.0.0.1", edge.port))
    try:
        sock.sendall((f"PATCH {paths[1]} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                      "Content-Type: application/offset+octet-stream\r\n"
                      f"Content-Length: {len(halves[1])}\r\n\r\n").encode())
        sock.sendall(halves[1][:5 * _MiB])  # past a checkpoint, then the edge dies mid-body
        acknowledged = wait_until(lambda: _offset(edge, paths[1]), timeout=20, what="a checkpoint")
        edge.stop(signal.SIGKILL)
    finally:
        sock.close()
    edge = edges()
    assert _offset(edge, paths[1]) == acknowledged
    # The final upload waits for its partials to be whole.
    status, _, body = request(edge, "POST", "/api/v1/uploads", headers={
        **TUS, "Upload-Concat": "final;" + " ".join(paths)})
    assert status == 400 and b"not complete" in body
    status, _, body = request(edge, "PATCH", paths[1], body=halves[1][acknowledged:],
                              headers={**TUS, **_OFFSET, "Upload-Offset": str(acknowledged)})
    assert status == 204, body
    status, headers, body = request(edge, "POST", "/api/v1/uploads", headers={
        **TUS, "Upload-Concat": "final;" + " ".join(f"{edge.url}{p}" for p in paths),
        "Upload-Metadata": "filename a2lsbC5tcDQ="})
    assert status == 201, body
    video_id = headers["Location"].rsplit("/", 1)[1]
    video = _video(edge, video_id)
    assert video["status"] == "queued" and video["sha256"] == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "data" / "sources" / video_id / "source.mp4").read_bytes() == data
    # The partials' files are gone with them.
    assert not [p for p in (tmp_path / "data" / "uploads").glob("*.part")]
