"""StreamGate load: players, binge viewers and uploaders.

    locust -f loadtests/locustfile.py --host http://edge.example:8080

Players open a video from the catalog, fetch the master playlist, pick a rendition from a
simulated bandwidth (a per-session base rate that drifts segment to segment), fetch the init
segment and segments at playback pace (divided by LOADTEST_SPEEDUP), switch rungs when the
bandwidth moves, seek, and stop after a while. Binge viewers watch whole videos back to back and
look at the API and the DASH manifest. Uploaders send small clips with tus, some abandoned
half-way with a DELETE. Settings come from the environment (locust owns the command line):

    LOADTEST_SPEEDUP      playback pace divisor (default 4: a 4 s segment every 1 s)
    LOADTEST_UPLOAD_FILE  clip the uploaders send (default: a 1 s 320x240 clip made at start
                          with ffmpeg; the load machine needs locust and ffmpeg, not StreamGate)
    LOADTEST_TOKEN        bearer token for uploads where auth.required is true
    LOADTEST_SEED         random seed (default 1): the same choices run to run
    LOADTEST_BEHAVIOUR    file to write what the users did (sessions, switches, seeks) as JSON
    LOADTEST_REQUEST_LOG  file to append one JSON line per request to (time, name, ok, error):
                          a scenario attributes requests and failures to its steps with it
    LOADTEST_UPLOADS      file to append the id of every completed upload to, one per line: the
                          uploads the server accepted, each of which must become a ready video
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tus
from clip import make_clip
from hls import Media, PlaylistError, parse_master, parse_media
from locust import FastHttpUser, between, events, task

SPEEDUP = float(os.environ.get("LOADTEST_SPEEDUP", "4"))
TOKEN = os.environ.get("LOADTEST_TOKEN", "")
RNG = random.Random(int(os.environ.get("LOADTEST_SEED", "1")))
CATALOG_TTL_S = 10.0
UPLOAD_CHUNK = 64 * 1024
# A failed PATCH is resumed from the server's offset after these pauses, as tus clients do
# (tus-js-client's retryDelays); then the upload is given up.
RESUME_DELAYS_S = (0.5, 1.0, 2.0, 4.0)


# What the virtual users did, beside the requests locust counts: evidence the behaviour happened.
BEHAVIOUR: Counter[str] = Counter()


@events.test_stop.add_listener
def _write_behaviour(environment: Any, **_: Any) -> None:
    path = os.environ.get("LOADTEST_BEHAVIOUR")
    if path:
        Path(path).write_text(json.dumps(dict(sorted(BEHAVIOUR.items())), indent=1) + "\n")


class Clip:
    """The bytes uploaders send, read once per process."""

    data: bytes = b""


class RequestLog:
    """One JSON line per request, flushed as it happens, when LOADTEST_REQUEST_LOG names a file."""

    out: Any = None


@events.init.add_listener
def _open_request_log(environment: Any, **_: Any) -> None:
    path = os.environ.get("LOADTEST_REQUEST_LOG")
    if path:
        RequestLog.out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the whole run


@events.request.add_listener
def _log_request(request_type: str, name: str, response_time: float, exception: Any = None,
                 **_: Any) -> None:
    if RequestLog.out is not None:
        RequestLog.out.write(json.dumps({"t": time.time(), "type": request_type, "name": name,
                                         "ms": round(response_time, 1), "ok": exception is None,
                                         "error": "" if exception is None else str(exception)[:300]}) + "\n")


def _record_upload(url: str) -> None:
    path = os.environ.get("LOADTEST_UPLOADS")
    if path:
        with open(path, "a") as out:
            out.write(url.rstrip("/").rsplit("/", 1)[1] + "\n")


@events.test_start.add_listener
def _prepare_upload(environment: Any, **_: Any) -> None:
    path = os.environ.get("LOADTEST_UPLOAD_FILE")
    if path:
        Clip.data = Path(path).read_bytes()
        return
    # Made here with ffmpeg: the load machine needs locust, not StreamGate (loadtests/clip.py).
    Clip.data = make_clip(seconds=1.0, width=320, height=240)


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class Viewer(FastHttpUser):
    """What players and binge viewers share: the catalog and one playback session."""

    abstract = True
    catalog: list[dict[str, Any]] = []
    catalog_at = 0.0

    def ready_videos(self) -> list[dict[str, Any]]:
        if time.monotonic() - self.catalog_at > CATALOG_TTL_S or not self.catalog:
            with self.client.get("/api/v1/videos?limit=100", name="/api/v1/videos",
                                 catch_response=True) as response:
                if response.status_code != 200:
                    response.failure(f"catalog: {response.status_code}")
                    return []
                videos = response.json()["videos"]
            self.catalog = [v for v in videos if v["status"] == "ready" and v.get("hls_url")]
            self.catalog_at = time.monotonic()
        return self.catalog

    def fetch_text(self, url: str, name: str) -> str | None:
        with self.client.get(_path(url), name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code} for {url}")
                return None
            return response.text

    def fetch_bytes(self, url: str, name: str, byte_range: tuple[int, int] | None = None) -> bool:
        headers = {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else {}
        with self.client.get(_path(url), name=name, headers=headers, catch_response=True) as response:
            expected = 206 if byte_range else 200
            if response.status_code != expected or not response.content:
                response.failure(f"{response.status_code} ({len(response.content or b'')} bytes) for {url}")
                return False
            return True

    def play(self, video: dict[str, Any], max_segments: int, seek_probability: float) -> None:
        """One session: master, a rung per segment from the simulated bandwidth, seeks, stop."""
        text = self.fetch_text(video["hls_url"], "/videos/[id]/master.m3u8")
        if text is None:
            return
        try:
            master = parse_master(text, video["hls_url"])
        except PlaylistError as exc:
            self.environment.events.request.fire(
                request_type="PARSE", name="/videos/[id]/master.m3u8", response_time=0, response_length=0,
                exception=exc, context={})
            return
        BEHAVIOUR["playback sessions"] += 1
        # Log-uniform between 300 kb/s and 8 Mb/s: phones on 3G to desks on fibre.
        bandwidth = math.exp(RNG.uniform(math.log(300e3), math.log(8e6)))
        playlists: dict[str, Media] = {}
        audio_url = next(iter(master.audio.values()), None)
        audio = self.media(audio_url, "[audio]/index.m3u8", playlists) if audio_url else None
        if audio_url and audio is None:
            return
        if audio and audio.init_uri and not self.fetch_bytes(audio.init_uri, "[audio]/init.mp4"):
            return
        position, watched, current = 0, 0, None
        while watched < max_segments:
            variant = master.pick(bandwidth)
            media = self.media(variant.uri, "[rung]/index.m3u8", playlists)
            if media is None:
                return
            if current != variant.uri:
                # A rung switch (or the start): a player fetches the new rung's init segment.
                if media.init_uri and not self.fetch_bytes(media.init_uri, "[rung]/init.mp4"):
                    return
                if current is not None:
                    BEHAVIOUR["rung switches"] += 1
                current = variant.uri
            if position >= len(media.segments):
                if media.ended or not media.segments:
                    BEHAVIOUR["sessions watched to the end"] += 1
                    return
                time.sleep(media.target_duration / SPEEDUP)  # EVENT playlist: wait for it to grow
                playlists.pop(variant.uri)
                continue
            segment = media.segments[position]
            # Now and then a player re-requests part of a segment (a retried or resumed read).
            ranged = (0, 1023) if RNG.random() < 0.05 else None
            if not self.fetch_bytes(segment.uri, "[rung]/[n].m4s" + (" (Range)" if ranged else ""), ranged):
                return
            if audio and position < len(audio.segments):
                if not self.fetch_bytes(audio.segments[position].uri, "[audio]/[n].m4s"):
                    return
            watched += 1
            BEHAVIOUR["segments played"] += 1
            time.sleep(segment.duration / SPEEDUP)
            bandwidth *= math.exp(RNG.gauss(0, 0.35))
            if RNG.random() < seek_probability:
                BEHAVIOUR["seeks"] += 1
                position = RNG.randrange(len(media.segments))
            else:
                position += 1

    def media(self, url: str, name: str, cache: dict[str, Media]) -> Media | None:
        if url not in cache:
            text = self.fetch_text(url, name)
            if text is None:
                return None
            try:
                cache[url] = parse_media(text, url)
            except PlaylistError as exc:
                self.environment.events.request.fire(
                    request_type="PARSE", name=name, response_time=0, response_length=0, exception=exc,
                    context={})
                return None
        return cache[url]


class Player(Viewer):
    """Opens a video, watches a few segments (seeking now and then), and leaves."""

    weight = 6
    wait_time = between(0.5, 2.0)

    @task
    def watch_something(self) -> None:
        videos = self.ready_videos()
        if videos:
            self.play(RNG.choice(videos), max_segments=RNG.randint(2, 10), seek_probability=0.15)


class BingeViewer(Viewer):
    """Watches videos to the end, one after another, and reads their details on the way."""

    weight = 2
    wait_time = between(0.1, 0.5)

    @task
    def binge(self) -> None:
        videos = self.ready_videos()
        for video in RNG.sample(videos, k=min(3, len(videos))):
            self.fetch_text(f"/api/v1/videos/{video['id']}", "/api/v1/videos/[id]")
            if video.get("poster_url"):
                self.fetch_bytes(video["poster_url"], "/videos/[id]/poster.jpg")
            if video.get("dash_url") and RNG.random() < 0.3:
                self.fetch_text(video["dash_url"], "/videos/[id]/manifest.mpd")
            self.play(video, max_segments=1000, seek_probability=0.0)


class Uploader(FastHttpUser):
    """Sends a small clip with tus in chunks, checking the offset like a resuming client (and
    resuming from the server's offset after a failed PATCH); one in five gives up half-way and
    terminates the upload."""

    weight = 1
    wait_time = between(2.0, 6.0)

    @task
    def upload(self) -> None:
        data = Clip.data
        headers = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}
        url = tus.create(self.client, len(data), headers, filename="load.mp4",
                         title=f"load test upload {RNG.randrange(10**6)}")
        if url is None:
            return
        abandon_at = len(data) // 2 if RNG.random() < 0.2 else None
        offset = 0
        while offset < len(data):
            if abandon_at is not None and offset >= abandon_at:
                tus.terminate(self.client, url, headers)
                BEHAVIOUR["uploads abandoned (DELETE)"] += 1
                return
            new = tus.patch(self.client, url, offset, data[offset:offset + UPLOAD_CHUNK], headers)
            for delay in RESUME_DELAYS_S:
                if new is not None:
                    break
                BEHAVIOUR["uploads resumed after a failed PATCH"] += 1
                time.sleep(delay)
                new = tus.offset(self.client, url, headers)
            if new is None:
                return
            if RNG.random() < 0.2:
                new = tus.offset(self.client, url, headers)
                if new is None:
                    return
            offset = new
        BEHAVIOUR["uploads completed"] += 1
        _record_upload(url)
