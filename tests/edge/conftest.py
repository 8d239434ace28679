"""Edge fixtures: a generated HLS+DASH tree, an in-process edge, an edge process, an origin server."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import free_port, streamgate_env
from support import terminate, wait_healthy

VIDEO_ID = "vid-1"


def _ffmpeg(*args: str, cwd: Path) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], cwd=cwd, check=True, timeout=60)


@pytest.fixture(scope="session")
def media_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One video as the pipeline lays it out: 2 video rungs + audio in fMP4 HLS, and a DASH MPD.

    Built with the ffmpeg command line (the pipeline's own output replaces it once it lands).
    """
    root = tmp_path_factory.mktemp("media-template")
    video = root / VIDEO_ID
    video.mkdir()
    source = ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=2",
              "-f", "lavfi", "-i", "sine=frequency=440:duration=2"]
    encode = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-keyint_min", "30",
              "-sc_threshold", "0", "-c:a", "aac", "-b:a", "64k"]
    _ffmpeg(*source, "-filter_complex", "[0:v]split=2[a][b];[b]scale=160:120[b2]",
            "-map", "[a]", "-map", "[b2]", "-map", "1:a", *encode,
            "-f", "hls", "-hls_time", "1", "-hls_playlist_type", "vod", "-hls_segment_type", "fmp4",
            "-hls_fmp4_init_filename", "init.mp4", "-hls_segment_filename", "%v/%d.m4s",
            "-master_pl_name", "master.m3u8",
            "-var_stream_map", "v:0,agroup:aud,name:240p v:1,agroup:aud,name:120p a:0,agroup:aud,name:audio",
            "%v/index.m3u8", cwd=video)
    # ffmpeg suffixes init names per variant (init_0.mp4); the pipeline's layout says init.mp4.
    for init in video.glob("*/init_*.mp4"):
        init.rename(init.with_name("init.mp4"))
        playlist = init.parent / "index.m3u8"
        playlist.write_text(playlist.read_text().replace(init.name, "init.mp4"))
    (video / "d0").mkdir()
    (video / "d1").mkdir()
    _ffmpeg(*source, "-map", "0:v", "-map", "1:a", *encode, "-f", "dash", "-seg_duration", "1",
            "-use_template", "1", "-use_timeline", "0",
            "-init_seg_name", "d$RepresentationID$/init.mp4",
            "-media_seg_name", "d$RepresentationID$/$Number$.m4s", "manifest.mpd", cwd=video)
    # Bigger segments than a 2 s test clip makes, for sendfile paths that must wait on the socket.
    (video / "240p" / "90.m4s").write_bytes(bytes(range(256)) * 4096 * 3)  # 3 MiB
    (video / "poster.jpg").write_bytes(b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9")
    return root


@pytest.fixture
def data_dir(tmp_path: Path, media_template: Path) -> Path:
    """A data dir whose media tree holds a copy of the template video."""
    data = tmp_path / "data"
    shutil.copytree(media_template, data / "media")
    return data


def edge_config(data_dir: Path, **edge: Any) -> Any:
    """A Config for an in-process edge on a free port; keyword args are ``edge.*`` keys."""
    from streamgate.common.config import config_from_tree

    cache = edge.pop("cache", {})
    tree = {"storage": {"data_dir": str(data_dir)},
            "server": {"host": "127.0.0.1", "port": free_port(), "workers": 1},
            "auth": {"required": False},
            "edge": edge, "cache": cache}
    return config_from_tree(tree)


@pytest.fixture
def make_config() -> Callable[..., Any]:
    return edge_config


@pytest.fixture
def start_edge() -> Iterator[Callable[..., Any]]:
    """Factory: an edge in this test's event loop (async context manager yielding EdgeServer)."""

    @asynccontextmanager
    async def start(config: Any) -> AsyncIterator[Any]:
        from streamgate.edge.server import EdgeServer

        server = EdgeServer(config)
        await server.start()
        try:
            yield server
        finally:
            await server.close()

    yield start


class EdgeProcess:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@pytest.fixture
def edge_process(tmp_path: Path) -> Iterator[Callable[..., EdgeProcess]]:
    """Factory: ``streamgate edge --workers N`` (uvloop, fast path) as a real child process."""
    started: list[EdgeProcess] = []

    def start(data_dir: Path, workers: int = 2, **env: str) -> EdgeProcess:
        port = free_port()
        log = tmp_path / f"edge{len(started)}.log"
        full_env = streamgate_env(data_dir, port, **env)
        full_env.pop("STREAMGATE_CONFIG", None)
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "streamgate", "edge", "--workers", str(workers)],
                                    env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        edge = EdgeProcess(proc, f"http://127.0.0.1:{port}", log)
        started.append(edge)

        wait_healthy(proc, edge.url + "/health", log, what="streamgate edge /health")
        return edge

    yield start
    for edge in started:
        terminate(edge.proc)


class Origin:
    """A real upstream aiohttp server serving a media tree, counting fetches per path.

    ``gate`` (an Event) holds every answer until the test releases it, so concurrent misses
    can be lined up at the edge first.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fetches: dict[str, int] = {}
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0
        self.url = ""
        self.fail_with: int | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        self.fetches[rel] = self.fetches.get(rel, 0) + 1
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        if self.fail_with is not None:
            return web.Response(status=self.fail_with)
        path = self.root / rel
        if ".." in rel or not path.is_file():
            return web.Response(status=404)
        cache_control = ("public, max-age=31536000, immutable" if rel.endswith((".m4s", ".mp4"))
                         else "public, max-age=60")
        return web.Response(body=path.read_bytes(),
                            headers={"ETag": f'"origin-{path.stat().st_size}"', "Cache-Control": cache_control})

    @property
    def total(self) -> int:
        return sum(self.fetches.values())


@pytest.fixture
async def origin(media_template: Path) -> AsyncIterator[Origin]:
    server = Origin(media_template)
    app = web.Application()
    app.router.add_get("/videos/{path:.+}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        server.gate.set()
        await runner.cleanup()
