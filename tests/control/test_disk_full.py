"""Disk full on the data dir of a real single node (issue 14).

A 64 MiB tmpfs mounted as ``streamgate run``'s data dir: uploads answer 507 with the JSON error
(below ``storage.min_free_space`` and when the disk really fills mid-body), what was acknowledged
stays whole, the catalog stays readable, a job that cannot get room fails with its reason while no
process crashes (the broker's journal and the catalog hold what they cannot write), and the node
serves again once space returns, without a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from support import journaled_state, mounted_tmpfs, terminate, wait_until

from streamgate.common.layout import JOURNAL_DB

MiB = 2**20
RESERVE = 8 * MiB


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def tus_post(url: str, length: int) -> tuple[int, dict[str, str], bytes]:
    return request(url + "/api/v1/uploads", "POST", {
        "Tus-Resumable": "1.0.0", "Upload-Length": str(length), "Upload-Metadata": "filename dC5tcDQ="})


def tus_patch(url: str, location: str, offset: int, body: bytes) -> tuple[int, dict[str, str], bytes]:
    return request(url + urlsplit(location).path, "PATCH", {
        "Tus-Resumable": "1.0.0", "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream"}, body)


def tus_offset(url: str, location: str) -> int:
    status, headers, _ = request(url + urlsplit(location).path, "HEAD", {"Tus-Resumable": "1.0.0"})
    assert status == 200
    return int(headers["Upload-Offset"])


def chunked_patch(url: str, location: str, offset: int, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """A PATCH without Content-Length (chunked): no size to check up front, so the disk fills mid-body."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall((f"PATCH {urlsplit(location).path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                      f"Tus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\n"
                      "Content-Type: application/offset+octet-stream\r\nTransfer-Encoding: chunked\r\n"
                      "Connection: close\r\n\r\n").encode())
        try:
            for at in range(0, len(body), 256 * 1024):
                piece = body[at:at + 256 * 1024]
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the edge answered and closed before the whole body was sent
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    head, _, payload = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, payload


def set_free(mount: Path, filler: Path, target: int) -> None:
    """Grow or shrink ``filler`` until the filesystem has about ``target`` bytes free."""
    filler.touch()
    size = filler.stat().st_size
    new = max(0, size + shutil.disk_usage(mount).free - target)
    if new < size:
        os.truncate(filler, new)
    elif new > size:
        with open(filler, "r+b") as f:
            # The node writes too: give up a few pages at a time until the allocation fits.
            for _ in range(64):
                try:
                    os.posix_fallocate(f.fileno(), 0, new)
                    return
                except OSError:
                    new -= 64 * 1024
            raise AssertionError("could not fill the data dir")


def video(url: str, video_id: str) -> dict[str, Any]:
    status, _, body = request(f"{url}/api/v1/videos/{video_id}")
    assert status == 200, body
    return json.loads(body)


@pytest.fixture
def tmpfs_node(run_platform: Callable[..., Any], tmp_path: Path) -> Iterator[Callable[..., Any]]:
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs as the data dir needs root (running as uid {os.geteuid()})")
    platforms: list[Any] = []

    def start(**env: str) -> Any:
        platform = run_platform(STREAMGATE__STORAGE__MIN_FREE_SPACE=str(RESERVE), **env)
        assert platform.data_dir == mount
        platforms.append(platform)
        return platform

    # The data dir run_platform gives its first node.
    with mounted_tmpfs(tmp_path / "data0", "64m") as mount:
        try:
            yield start
        finally:
            for platform in platforms:
                terminate(platform.proc, 30)


def assert_507(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 507, (status, body[:300])
    assert headers.get("Content-Type", "").startswith("application/json")
    error = json.loads(body)
    assert error["error"] == "insufficient storage" and error["detail"], error


def test_disk_full_answers_507_keeps_what_was_acknowledged_and_recovers(tmpfs_node, small_video: Path) -> None:
    platform = tmpfs_node()
    url, mount = platform.url, platform.data_dir
    filler = mount / "filler.bin"

    # Below the reserve: a new upload is refused before a byte is stored.
    set_free(mount, filler, RESERVE - MiB)
    assert_507(*tus_post(url, 1000))

    # An upload accepted with room to spare; then the disk nears full: its PATCH gets 507 too.
    set_free(mount, filler, 40 * MiB)
    data = os.urandom(12 * MiB)
    status, headers, _ = tus_post(url, len(data))
    assert status == 201
    location = headers["Location"]
    set_free(mount, filler, RESERVE - MiB)
    assert_507(*tus_patch(url, location, 0, data[:MiB]))
    assert tus_offset(url, location) == 0

    # Room for the reserve but not for the body: the disk really fills mid-body (ENOSPC).
    set_free(mount, filler, RESERVE + 2 * MiB)
    assert_507(*chunked_patch(url, location, 0, data))
    kept = tus_offset(url, location)
    assert 0 <= kept < len(data)
    # What is acknowledged is on disk, byte for byte; nothing past it is reported.
    part = next(mount.rglob(f"{urlsplit(location).path.rsplit('/', 1)[1]}.part"))
    assert part.read_bytes()[:kept] == data[:kept]
    # The catalog stays readable while the disk is full.
    status, _, body = request(url + "/api/v1/videos")
    assert status == 200 and json.loads(body)

    # Space returns: the same upload resumes from its acknowledged offset and completes whole.
    filler.unlink()
    status, _, body = tus_patch(url, location, kept, data[kept:])
    assert status == 204, body
    upload_id = urlsplit(location).path.rsplit("/", 1)[1]
    done = wait_until(lambda: (v := video(url, upload_id))["sha256"] and v, timeout=30,
                      what="the completed upload's checksum")
    assert done["sha256"] == hashlib.sha256(data).hexdigest() and done["size"] == len(data)

    # And a real video goes all the way to ready.
    clip = small_video.read_bytes()
    status, headers, _ = tus_post(url, len(clip))
    assert status == 201
    assert tus_patch(url, headers["Location"], 0, clip)[0] == 204
    clip_id = urlsplit(headers["Location"]).path.rsplit("/", 1)[1]
    ready = wait_until(lambda: (v := video(url, clip_id))["status"] in ("ready", "failed") and v,
                       timeout=90, what="the clip to be transcoded")
    assert ready["status"] == "ready", ready
    assert request(url + urlsplit(ready["hls_url"]).path)[0] == 200


def farm_figures(url: str) -> dict[str, Any]:
    status, _, body = request(f"{url}/api/v1/farm/metrics")
    assert status == 200, body
    return json.loads(body)


def test_a_job_without_room_fails_with_its_reason_and_the_node_serves_on(tmpfs_node, video_factory) -> None:
    """Before the fix the broker exited on the journal write and its restarts died of SIGBUS
    (prometheus_client's sparse metric files mapped on the full disk) until space returned."""
    platform = tmpfs_node()
    url, mount = platform.url, platform.data_dir
    filler = mount / "filler.bin"
    clip = video_factory("disk-full.mp4", seconds=4.0, width=640, height=480).read_bytes()
    status, headers, body = tus_post(url, len(clip))
    assert status == 201, body
    assert tus_patch(url, headers["Location"], 0, clip)[0] == 204
    video_id = urlsplit(headers["Location"]).path.rsplit("/", 1)[1]
    # The job is accepted (journaled: a submit the journal cannot take is refused, and the video
    # would wait queued); now the disk fills before the farm writes its renditions.
    wait_until(lambda: journaled_state(mount / "state" / JOURNAL_DB, video_id), timeout=30, what="the job in the journal")
    set_free(mount, filler, 0)
    # The broker serves on and dead-letters the job (every attempt meets the full disk): its live
    # figures say so while neither its journal nor the catalog can take a write.
    wait_until(lambda: farm_figures(url)["total_tasks_failed"] >= 1, timeout=90,
               what="the broker to fail the job while the disk is full")
    assert shutil.disk_usage(mount).free < RESERVE
    # The catalog stays readable; nothing of the video is published or served.
    status, _, body = request(url + "/api/v1/videos")
    assert status == 200
    assert video(url, video_id)["status"] != "ready"
    assert request(f"{url}/videos/{video_id}/master.m3u8")[0] == 404
    # A new upload is refused with the reason while the disk is full.
    assert_507(*tus_post(url, len(clip)))
    log = platform.log.read_text()
    assert "exited with" not in log, log[-4000:]  # no role crashed or restarted

    # Space returns: the outcome held back reaches the journal and the catalog, no restart needed.
    filler.unlink()
    failed = wait_until(lambda: (v := video(url, video_id))["status"] in ("ready", "failed") and v,
                        timeout=30, what="the job's outcome in the catalog")
    assert failed["status"] == "failed", failed
    assert "no space left on device" in failed["error"].lower(), failed
    assert failed["hls_url"] is None
    assert wait_until(lambda: journaled_state(mount / "state" / JOURNAL_DB, video_id) == "failed", timeout=10,
                      what="the held outcome in the journal")
    # No partial rendition left behind for a retry or a reader to find; the journal is whole.
    assert not list((mount / "media").glob(f"{video_id}/**/*.m3u8"))
    db = sqlite3.connect(f"file:{mount / 'state' / JOURNAL_DB}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    # The node serves new uploads again, all the way to ready.
    status, headers, body = tus_post(url, len(clip))
    assert status == 201, body
    assert tus_patch(url, headers["Location"], 0, clip)[0] == 204
    clip_id = urlsplit(headers["Location"]).path.rsplit("/", 1)[1]
    ready = wait_until(lambda: (v := video(url, clip_id))["status"] in ("ready", "failed") and v,
                       timeout=90, what="the clip to be transcoded")
    assert ready["status"] == "ready", ready
    log = platform.log.read_text()
    assert "exited with" not in log and "Bus error" not in log, log[-4000:]
