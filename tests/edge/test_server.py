"""``streamgate edge --workers N`` as real processes on uvloop, read by ffprobe/ffmpeg over HTTP."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support import processes_titled, wait_until

VIDEO_ID = "vid-1"


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def ffprobe(url: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name,width,height",
                          "-of", "json", url], capture_output=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_workers_share_the_port_and_players_read_hls_and_dash(data_dir: Path, edge_process) -> None:
    edge = edge_process(data_dir, workers=2)
    # Two processes, both named, on one port (SO_REUSEPORT).
    titled = wait_until(lambda: [p for p in processes_titled("streamgate edge")
                                 if p[0] == edge.proc.pid or _parent(p[0]) == edge.proc.pid],
                        timeout=20, what="2 edge processes")
    wait_until(lambda: len([p for p in processes_titled("streamgate edge")
                            if p[0] == edge.proc.pid or _parent(p[0]) == edge.proc.pid]) == 2,
               timeout=20, what="2 edge processes")
    assert titled

    hls = ffprobe(f"{edge.url}/videos/{VIDEO_ID}/master.m3u8")
    kinds = {(s["codec_type"], s["codec_name"]) for s in hls["streams"]}
    assert ("video", "h264") in kinds and ("audio", "aac") in kinds
    assert {s.get("height") for s in hls["streams"] if s["codec_type"] == "video"} >= {240, 120}

    dash = ffprobe(f"{edge.url}/videos/{VIDEO_ID}/manifest.mpd")
    assert {s["codec_type"] for s in dash["streams"]} == {"video", "audio"}

    # A player reads every segment of the 240p rendition through the edge (sendfile under uvloop).
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", f"{edge.url}/videos/{VIDEO_ID}/240p/index.m3u8",
                              "-f", "framemd5", "-"], capture_output=True, timeout=60)
    assert decoded.returncode == 0, decoded.stderr.decode()[-2000:]
    assert decoded.stdout.count(b"\n0,") >= 55  # ~2 s at 30 fps

    # Many requests over both processes, including the 3 MiB segment, then metrics from all.
    big = (data_dir / "media" / VIDEO_ID / "240p" / "90.m4s").read_bytes()
    for _ in range(20):
        status, body, headers = get(f"{edge.url}/videos/{VIDEO_ID}/240p/90.m4s")
        assert status == 200 and body == big
    status, body, _ = get(f"{edge.url}/videos/{VIDEO_ID}/240p/90.m4s", {"Range": f"bytes={len(big)}-"})
    assert status == 416
    status, text, headers = get(f"{edge.url}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    served_key = ("streamgate_edge_requests_total", (("route", "segment"), ("status", "200")))

    def all_flushed() -> dict | None:  # each process adds its tallies to the shared files every second
        samples = _samples(get(f"{edge.url}/metrics")[1].decode())
        return samples if samples.get(served_key, 0) >= 20 else None

    samples = wait_until(all_flushed, timeout=10, what="20 segment requests in /metrics")
    assert samples[("streamgate_edge_response_bytes_total", (("route", "segment"),))] >= 20 * len(big)
    assert not any(name.endswith("_created") for name, _ in samples)
    assert lint_exposition(get(f"{edge.url}/metrics")[1].decode()) == []

    assert edge.stop() == 0
    wait_until(lambda: not [p for p in processes_titled("streamgate edge")
                            if _parent(p[0]) == edge.proc.pid], timeout=20, what="workers gone")


def test_a_dead_worker_is_replaced(data_dir: Path, edge_process) -> None:
    import os
    import signal

    edge = edge_process(data_dir, workers=2)

    def children() -> list[int]:
        return [pid for pid, _ in processes_titled("streamgate edge") if _parent(pid) == edge.proc.pid]

    first = wait_until(children, timeout=20, what="a worker")
    os.kill(first[0], signal.SIGKILL)
    replaced = wait_until(lambda: [p for p in children() if p != first[0]], timeout=20, what="a new worker")
    assert replaced
    assert get(f"{edge.url}/videos/{VIDEO_ID}/master.m3u8")[0] == 200
    assert edge.stop() == 0


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.parametrize("fast_path", ["true", "false"], ids=["fast", "aiohttp"])
def test_the_pipelines_own_ladder_plays_through_the_edge(fast_path: str, tmp_path: Path, small_video: Path,
                                                         edge_process) -> None:
    """Both paths under uvloop, the aiohttp one writing with edge/fastpath/sendfile.py (not FileResponse)."""
    pipeline = pytest.importorskip("streamgate.farm.pipeline.transcode")
    data = tmp_path / "data"
    pipeline.transcode(small_video, data / "media" / "pipe-1",
                       pipeline.TranscodeSettings(ladder=[240, 120], segment_duration=1.0, preset="ultrafast"))
    edge = edge_process(data, workers=1, STREAMGATE__EDGE__FAST_PATH=fast_path)
    for manifest in ("master.m3u8", "manifest.mpd"):
        probe = ffprobe(f"{edge.url}/videos/pipe-1/{manifest}")
        assert ("audio", "aac") in {(s["codec_type"], s["codec_name"]) for s in probe["streams"]}, manifest
        assert 240 in {s.get("height") for s in probe["streams"]}, manifest
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", f"{edge.url}/videos/pipe-1/manifest.mpd",
                              "-map", "0:v:0", "-f", "framemd5", "-"], capture_output=True, timeout=60)
    assert decoded.returncode == 0, decoded.stderr.decode()[-2000:]
    assert decoded.stdout.count(b"\n0,") >= 55
    status, _, headers = get(f"{edge.url}/videos/pipe-1/audio/init.mp4")
    assert status == 200 and headers["Content-Type"] == "audio/mp4"
    assert edge.stop() == 0


def lint_exposition(text: str) -> list[str]:
    """The rules ``promtool check metrics`` applies that matter here (promtool itself is a
    96 MB Debian package): HELP and TYPE per family, counters named ``_total``, no duplicate
    series, histograms with a ``+Inf`` bucket, no ``_created`` series."""
    import re

    problems = []
    helps = set(re.findall(r"^# HELP (\S+) ", text, re.M))
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    seen = set()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series = line.rsplit(" ", 1)[0]
        if series in seen:
            problems.append(f"duplicate series {series}")
        seen.add(series)
        if re.match(r"\w+_created[{ ]", line):
            problems.append(f"created series {series}")
    for family, kind in types.items():
        if family not in helps:
            problems.append(f"{family}: no HELP")
        sample = family if family.endswith("_total") else f"{family}_total"
        if kind == "counter" and not re.search(rf"^{sample}[{{ ]", text, re.M):
            problems.append(f"{family}: a counter without _total samples")
        if kind == "histogram" and not re.search(rf'^{family}_bucket{{[^}}]*le="\+Inf"', text, re.M):
            problems.append(f"{family}: a histogram without a +Inf bucket")
    return problems
