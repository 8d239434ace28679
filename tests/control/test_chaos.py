"""A seeded chaos run on a real single node (issue 14): kill -9 of each process kind at random
points while uploads, transcodes and playback run, then check what must hold after each kill.

- every acknowledged upload byte is kept: the offset a HEAD reports never falls below one a 204
  acknowledged, and each finished upload's checksum is the checksum of what was sent;
- every accepted job is done exactly once: one journal row per video, ``done``, and the video ready;
- no partial file is served: every segment fetched during the run equals the file as published;
- no shared memory leaked: /dev/shm holds what it held before the node started.

``make test`` runs a short version (3 kills); ``make test-chaos`` the long seeded runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from support import descendants_of, shm_segments, title_of, wait_until

CHUNK = 64 * 1024
KINDS = ("edge copy", "edge", "broker", "farm", "farm-worker", "encoder", "control")


def _request(url: str, method: str = "GET", headers: dict[str, str] | None = None,
             body: bytes | None = None, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _retrying(call: Callable[[], tuple[int, dict[str, str], bytes]], ok: Callable[[int], bool],
              deadline: float) -> tuple[int, dict[str, str], bytes]:
    """Repeat ``call`` through refused connections and 5xx (a killed process) until ``ok``."""
    while True:
        try:
            answer = call()
            if ok(answer[0]) or (answer[0] < 500 and answer[0] not in (423,)):
                return answer
        except OSError:
            pass
        assert time.monotonic() < deadline, "the node did not come back in time"
        time.sleep(0.2)


class Uploader(threading.Thread):
    """A resumable tus client that survives kills: resumes from the offset the edge reports."""

    def __init__(self, url: str, data: bytes, deadline: float) -> None:
        super().__init__(daemon=True)
        self.url, self.data, self.deadline = url, data, deadline
        self.video_id = ""
        self.acknowledged = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._upload()
        except BaseException as exc:  # reported by the test thread
            self.error = exc

    def _upload(self) -> None:
        tus = {"Tus-Resumable": "1.0.0"}
        status, headers, body = _retrying(lambda: _request(self.url + "/api/v1/uploads", "POST", {
            **tus, "Upload-Length": str(len(self.data)), "Upload-Metadata": "filename Yy5tcDQ="}),
            lambda s: s == 201, self.deadline)
        assert status == 201, body
        path = urlsplit(headers["Location"]).path
        self.video_id = path.rsplit("/", 1)[1]
        while True:
            status, headers, _ = _retrying(lambda: _request(self.url + path, "HEAD", tus),
                                           lambda s: s == 200, self.deadline)
            assert status == 200
            offset = int(headers["Upload-Offset"])
            assert offset >= self.acknowledged, f"acknowledged {self.acknowledged}, now reported {offset}"
            if offset == len(self.data):
                return
            piece = self.data[offset:offset + CHUNK]
            try:
                status, headers, _ = _request(self.url + path, "PATCH", {
                    **tus, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
                    piece)
            except OSError:
                continue
            if status == 204:
                self.acknowledged = max(self.acknowledged, int(headers["Upload-Offset"]))
            assert time.monotonic() < self.deadline, "the upload did not finish in time"
            time.sleep(0.05)  # slow enough for kills to land mid-upload


class Player(threading.Thread):
    """Fetches the playlists and segments of ready videos; remembers each segment body it got."""

    def __init__(self, url: str, ids: Callable[[], list[str]]) -> None:
        super().__init__(daemon=True)
        self.url, self.ids = url, ids
        self.stop = threading.Event()
        self.fetched: dict[str, set[str]] = {}
        self.misses: list[tuple[str, int]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for video_id in self.ids():
                try:
                    self._play(video_id)
                except OSError:
                    pass  # a killed edge: the next round retries
            self.stop.wait(0.2)

    def _play(self, video_id: str) -> None:
        status, _, body = _request(f"{self.url}/api/v1/videos/{video_id}")
        if status != 200 or json.loads(body)["status"] != "ready":
            return
        base = urlsplit(json.loads(body)["hls_url"]).path.rsplit("/", 1)[0] + "/"
        status, _, master = _request(self.url + base + "master.m3u8")
        if status != 200:
            self.misses.append((base + "master.m3u8", status))
            return
        for line in master.decode().splitlines():
            if line and not line.startswith("#"):
                status, _, playlist = _request(self.url + base + line)
                if status != 200:
                    continue
                folder = line.rsplit("/", 1)[0] + "/" if "/" in line else ""
                segments = [s for s in playlist.decode().splitlines() if s and not s.startswith("#")]
                for seg in segments[:4]:
                    status, _, content = _request(self.url + base + folder + seg)
                    if status == 200:
                        name = f"{video_id}/{folder}{seg}"
                        self.fetched.setdefault(name, set()).add(hashlib.sha256(content).hexdigest())


def _processes(root: int) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {kind: [] for kind in KINDS}
    for pid in descendants_of(root):
        title = title_of(pid)
        if title.startswith("streamgate edge"):
            parent = title_of(int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]))
            found["edge copy" if parent.startswith("streamgate edge") else "edge"].append(pid)
        elif title.startswith("streamgate encoder"):
            found["encoder"].append(pid)
        else:
            for kind in ("broker", "farm-worker", "farm", "control"):
                if title.startswith(f"streamgate {kind}"):
                    found[kind].append(pid)
                    break
    return found


def chaos_run(run_platform: Callable[..., Any], clip: bytes, *, seed: int, kills: int, uploads: int) -> list[str]:
    rng = random.Random(seed)
    shm_before = shm_segments()
    platform = run_platform(STREAMGATE__SERVER__WORKERS="2", STREAMGATE__SERVER__RESTART_DELAY="0.2s")
    url, root = platform.url, platform.proc.pid
    deadline = time.monotonic() + 60 + 40 * kills
    uploaders = [Uploader(url, clip, deadline) for _ in range(uploads)]
    player = Player(url, lambda: [u.video_id for u in uploaders if u.video_id])
    player.start()
    done: list[str] = []
    for uploader in uploaders:
        uploader.start()
    for _ in range(kills):
        kind = rng.choice(KINDS)
        time.sleep(rng.uniform(0.2, 2.0))
        # An encoder exists only mid-transcode: take one if there is, else kill a farm worker.
        pids = _processes(root)["encoder"] if kind == "encoder" else _wait_for_kind(root, kind)
        if not pids:
            kind = "farm-worker"
            pids = _wait_for_kind(root, kind)
        victim = rng.choice(pids)
        os.kill(victim, signal.SIGKILL)
        done.append(f"{kind} {victim}")
        # Every role comes back: the node answers again before the next kill.
        wait_until(lambda: _up(url), timeout=60, what="the node to recover from the kill")
    for uploader in uploaders:
        uploader.join(max(1.0, deadline - time.monotonic()))
        assert uploader.error is None, uploader.error
        assert not uploader.is_alive(), "an upload never finished"
    ids = [u.video_id for u in uploaders]

    def video(video_id: str) -> dict[str, Any]:
        return json.loads(_retrying(lambda: _request(f"{url}/api/v1/videos/{video_id}"),
                                    lambda s: s == 200, deadline)[2])

    def ended(video_id: str) -> dict[str, Any] | None:
        got = video(video_id)
        return got if got["status"] in ("ready", "failed") else None

    for uploader in uploaders:
        # Every acknowledged byte kept: the stored source is exactly what was sent.
        got = wait_until(lambda vid=uploader.video_id: ended(vid),  # type: ignore[misc]
                         timeout=max(30.0, deadline - time.monotonic()), what="every video to be ready")
        assert got["status"] == "ready", got
        assert got["sha256"] == hashlib.sha256(uploader.data).hexdigest()
    player.stop.set()
    player.join(30)
    for video_id in ids:  # a last round of playback over the ready videos
        player._play(video_id)
    # Exactly once: one journal row per video, done, and no other job.
    journal = sqlite3.connect(platform.data_dir / "state" / "broker-journal.sqlite3")
    try:
        rows = journal.execute("SELECT job_id, state FROM jobs").fetchall()
    finally:
        journal.close()
    assert sorted(rows) == sorted((i, "done") for i in ids), rows
    # No partial file served: each segment fetched equals the published file.
    media = platform.data_dir / "media"
    assert player.fetched, f"playback fetched nothing: {player.misses[-5:]}"
    for name, digests in player.fetched.items():
        assert digests == {hashlib.sha256((media / name).read_bytes()).hexdigest()}, name
    platform.stop(signal.SIGTERM, timeout=60)
    # No shared memory leaked by the killed processes (the encoders' frame buffers).
    wait_until(lambda: shm_segments() <= shm_before, timeout=15, what="/dev/shm to be as before")
    return done


def _wait_for_kind(root: int, kind: str) -> list[int]:
    return wait_until(lambda: _processes(root)[kind] or None, timeout=15, interval=0.05,
                      what=f"a {kind} process")


def _up(url: str) -> bool:
    try:
        return _request(url + "/health", timeout=2)[0] == 200
    except OSError:
        return False


def test_chaos_short(run_platform, small_video: Path) -> None:
    killed = chaos_run(run_platform, small_video.read_bytes(), seed=14, kills=3, uploads=2)
    print("killed:", ", ".join(killed))
    assert len(killed) == 3


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chaos_long(run_platform, small_video: Path, seed: int) -> None:
    killed = chaos_run(run_platform, small_video.read_bytes(), seed=seed, kills=12, uploads=4)
    print("killed:", ", ".join(killed))
    assert len(killed) == 12
