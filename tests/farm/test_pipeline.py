"""The farm pipeline end to end: real PyAV decodes, real libx264 encoder processes, the gate,
ffprobe over the output, and no ring or encoder left behind whatever happens."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import shm_segments, wait_until

from streamgate.common.media import TranscodeProgress, TranscodeResult
from streamgate.farm.pipeline.errors import (
    BadInputError,
    EncoderFailedError,
    TranscodeCancelled,
    TranscodeError,
)
from streamgate.farm.pipeline.gate import check_ladder, default_schema
from streamgate.farm.pipeline.ring import RING_PREFIX
from streamgate.farm.pipeline.transcode import TranscodeSettings, transcode

SMALL = TranscodeSettings(ladder=[240, 180], segment_duration=1.0)


def rings_of(pid: int) -> set[str]:
    return {name for name in shm_segments() if name.startswith(f"{RING_PREFIX}{pid}-")}


def encoders_of(parent: int) -> list[int]:
    """Live encoder processes (by title) whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if cmdline.startswith("streamgate encoder") and int(fields[1]) == parent and fields[0] != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def nothing_left() -> Iterator[None]:
    """After every test: no ring of this process in /dev/shm, no encoder child alive."""
    yield
    wait_until(lambda: not rings_of(os.getpid()), timeout=10, what="rings to be unlinked")
    wait_until(lambda: not encoders_of(os.getpid()), timeout=10, what="encoders to exit")


def ffprobe(path: Path, *args: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-of", "json", *args, str(path)],
                         check=True, capture_output=True, timeout=60).stdout
    return json.loads(out)


@pytest.fixture(scope="module")
def ladder(tmp_path_factory: pytest.TempPathFactory, video_factory: Callable[..., Path]) -> tuple[Path, TranscodeResult, list[TranscodeProgress]]:
    source = video_factory("small.mp4", seconds=2.0, width=320, height=240)
    out = tmp_path_factory.mktemp("ladder")
    reports: list[TranscodeProgress] = []
    result = transcode(source, out, SMALL, on_progress=reports.append)
    return out, result, reports


def test_ladder_tree_and_result(ladder: tuple[Path, TranscodeResult, list[TranscodeProgress]]) -> None:
    out, result, _ = ladder
    assert [(r.name, r.width, r.height) for r in result.renditions] == [("240p", 320, 240), ("180p", 240, 180)]
    assert result.audio and result.audio_rendition is not None
    assert result.frames == 60 and result.duration_s == pytest.approx(2.0, abs=0.05)
    for name in ("240p", "180p", "audio"):
        files = sorted(p.name for p in (out / name).iterdir())
        assert files == ["index.m3u8", "init.mp4", "seg-00001.m4s", "seg-00002.m4s"], files
    assert (out / "poster.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert not [p for p in out.rglob(".*.tmp")], "temporary files left behind"
    for stage in ("probe", "decode", "encode:240p", "encode:180p", "package", "gate", "total"):
        assert result.stage_seconds[stage] >= 0
    check_ladder(out)  # the gate passes again on the files as they are


def test_playlists_are_vod_relative_and_complete(ladder: tuple[Path, TranscodeResult, list[TranscodeProgress]]) -> None:
    out, result, _ = ladder
    master = (out / "master.m3u8").read_text()
    assert "#EXT-X-VERSION:7" in master and "#EXT-X-INDEPENDENT-SEGMENTS" in master
    assert 'URI="audio/index.m3u8"' in master and "240p/index.m3u8" in master
    assert "http" not in master and "\n/" not in master
    assert f"BANDWIDTH={result.renditions[0].bandwidth}," in master
    import m3u8

    parsed = m3u8.loads(master)
    assert [(p.uri, p.stream_info.resolution) for p in parsed.playlists] == [
        ("240p/index.m3u8", (320, 240)), ("180p/index.m3u8", (240, 180))]
    for playlist, rendition in zip(parsed.playlists, result.renditions, strict=True):
        assert playlist.stream_info.bandwidth == rendition.bandwidth
        assert playlist.stream_info.average_bandwidth == rendition.average_bandwidth
        assert playlist.stream_info.codecs == rendition.codecs and playlist.stream_info.frame_rate == 30.0
    assert [(m.type, m.group_id, m.uri) for m in parsed.media] == [("AUDIO", "audio", "audio/index.m3u8")]
    media = (out / "240p" / "index.m3u8").read_text()
    vod = m3u8.loads(media)
    assert vod.is_endlist and vod.playlist_type == "vod" and vod.target_duration == 1
    assert [s.uri for s in vod.segments] == ["seg-00001.m4s", "seg-00002.m4s"]
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in media and media.rstrip().endswith("#EXT-X-ENDLIST")
    assert '#EXT-X-MAP:URI="init.mp4"' in media
    mpd = (out / "manifest.mpd").read_text()
    assert 'type="static"' in mpd and 'lang="und"' in mpd and "://" not in mpd


def test_ffprobe_reads_every_rendition(ladder: tuple[Path, TranscodeResult, list[TranscodeProgress]]) -> None:
    out, _, _ = ladder
    for name, (width, height) in {"240p": (320, 240), "180p": (240, 180)}.items():
        info = ffprobe(out / name / "index.m3u8", "-count_frames", "-show_entries",
                       "stream=codec_name,profile,width,height,nb_read_frames,pix_fmt")
        stream = info["streams"][0]
        assert (stream["codec_name"], stream["width"], stream["height"]) == ("h264", width, height)
        assert stream["pix_fmt"] == "yuv420p" and int(stream["nb_read_frames"]) == 60
        packets = ffprobe(out / name / "index.m3u8", "-show_entries", "packet=pts_time,flags")["packets"]
        keyframes = sorted(round(float(p["pts_time"]), 3) for p in packets if "K" in p["flags"])
        start = min(float(p["pts_time"]) for p in packets)
        # An IDR at every segment start, one second apart, the same in every rung.
        assert keyframes == [round(start, 3), round(start + 1.0, 3)]
    audio = ffprobe(out / "audio" / "index.m3u8", "-show_entries", "stream=codec_name,sample_rate,channels")
    assert audio["streams"][0]["codec_name"] == "aac" and audio["streams"][0]["channels"] == 2
    dash = ffprobe(out / "manifest.mpd", "-show_entries", "stream=codec_type,width")
    assert sorted(s["codec_type"] for s in dash["streams"]) == ["audio", "video", "video"]


def test_progress_reports(ladder: tuple[Path, TranscodeResult, list[TranscodeProgress]]) -> None:
    _, _, reports = ladder
    stages = [r.stage for r in reports]
    assert stages[0] == "probe" and stages[-1] == "done" and "encode" in stages and "gate" in stages
    encode = [r for r in reports if r.stage == "encode"]
    assert encode[-1].frames_total == 60 and max(r.frames_done for r in encode) == 60
    fractions = [r.fraction for r in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_playlists_grow_as_event_while_running(tmp_path: Path, video_factory: Callable[..., Path]) -> None:
    source = video_factory("three.mp4", seconds=3.0, width=320, height=240)
    out = tmp_path / "out"
    seen: list[str] = []
    masters: list[str] = []
    mpds: list[bytes] = []

    def peek(progress: TranscodeProgress) -> None:
        playlist = out / "180p" / "index.m3u8"
        if progress.stage == "encode" and playlist.exists():
            seen.append(playlist.read_text())
            if (out / "master.m3u8").exists():
                masters.append((out / "master.m3u8").read_text())
            if (out / "manifest.mpd").exists():
                mpds.append((out / "manifest.mpd").read_bytes())

    transcode(source, out, TranscodeSettings(ladder=[180], segment_duration=1.0), on_progress=peek)
    growing = [text for text in seen if "#EXT-X-PLAYLIST-TYPE:EVENT" in text]
    assert growing, "no EVENT playlist was published while the job ran"
    assert all("#EXT-X-ENDLIST" not in text for text in growing)
    # Players can start before the end: a master playlist is published with the first segments.
    assert masters and "180p/index.m3u8" in masters[0] and 'URI="audio/index.m3u8"' in masters[0]
    # ... and a dynamic MPD over the same segments, valid against the schema.
    from lxml import etree

    schema = etree.XMLSchema(etree.parse(str(default_schema()), etree.XMLParser(no_network=True)))
    assert mpds
    for mpd in mpds:
        doc = etree.fromstring(mpd, etree.XMLParser(no_network=True))
        assert doc.get("type") == "dynamic" and schema.validate(doc), schema.error_log
    assert 'type="static"' in (out / "manifest.mpd").read_text()
    assert (out / "180p" / "index.m3u8").read_text().rstrip().endswith("#EXT-X-ENDLIST")


def test_a_worker_running_many_jobs_leaks_no_descriptor(tmp_path: Path, video_factory: Callable[..., Path]) -> None:
    source = video_factory("small.mp4", seconds=2.0, width=320, height=240)
    settings = TranscodeSettings(ladder=[180], segment_duration=1.0)
    transcode(source, tmp_path / "first", settings)
    fds = set(os.listdir("/proc/self/fd"))
    for run in range(2):
        transcode(source, tmp_path / f"again{run}", settings)
    assert set(os.listdir("/proc/self/fd")) == fds


def test_runs_off_the_main_thread_and_inside_a_daemonic_process(tmp_path: Path,
                                                                 video_factory: Callable[..., Path]) -> None:
    """How the farm worker calls it: from a thread, inside a (possibly daemonic) spawned process."""
    import multiprocessing

    source = video_factory("small.mp4", seconds=2.0, width=320, height=240)
    settings = TranscodeSettings(ladder=[180], segment_duration=1.0)
    results: list[TranscodeResult] = []
    thread = threading.Thread(target=lambda: results.append(transcode(source, tmp_path / "thread", settings)))
    thread.start()
    thread.join(60)
    assert results and results[0].frames == 60
    worker = multiprocessing.get_context("spawn").Process(
        target=transcode, args=(source, tmp_path / "daemon", settings), daemon=True)
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0
    check_ladder(tmp_path / "daemon")


def test_never_upscales(tmp_path: Path, video_factory: Callable[..., Path]) -> None:
    source = video_factory("small.mp4", seconds=2.0, width=320, height=240)
    result = transcode(source, tmp_path, TranscodeSettings(ladder=[1080, 720, 240], segment_duration=1.0))
    assert [r.name for r in result.renditions] == ["240p"]
    assert not (tmp_path / "720p").exists()


@pytest.mark.parametrize(("name", "params", "expect"), [
    ("odd.mp4", dict(width=1278, height=719, seconds=0.5), [("240p", 426, 240), ("180p", 320, 180)]),
    ("rotated.mp4", dict(rotate=90, seconds=1.0), [("240p", 240, 320), ("180p", 180, 240)]),
    ("vfr.mp4", dict(vfr=True, seconds=1.0), [("240p", 320, 240), ("180p", 240, 180)]),
    ("ten-bit.mkv", dict(pix_fmt="yuv420p10le", seconds=1.0), [("240p", 320, 240), ("180p", 240, 180)]),
    ("four-two-two.mp4", dict(pix_fmt="yuv422p", seconds=1.0), [("240p", 320, 240), ("180p", 240, 180)]),
    ("one-frame.mp4", dict(seconds=1 / 30), [("240p", 320, 240), ("180p", 240, 180)]),
    ("video-only.mp4", dict(audio=False, seconds=1.0), [("240p", 320, 240), ("180p", 240, 180)]),
    ("tiny.mp4", dict(width=96, height=64, seconds=1.0), [("64p", 96, 64)]),
])
def test_awkward_sources_give_a_conformant_ladder(tmp_path: Path, video_factory: Callable[..., Path], name: str,
                                                  params: dict, expect: list[tuple[str, int, int]]) -> None:
    source = video_factory(name, **params)
    started = time.monotonic()
    result = transcode(source, tmp_path, SMALL)  # the gate ran inside
    assert time.monotonic() - started < 30
    assert [(r.name, r.width, r.height) for r in result.renditions] == expect
    assert result.audio == params.get("audio", True)
    info = ffprobe(tmp_path / expect[0][0] / "index.m3u8", "-count_frames", "-show_entries",
                   "stream=width,height,nb_read_frames")
    assert (info["streams"][0]["width"], info["streams"][0]["height"]) == expect[0][1:]
    assert int(info["streams"][0]["nb_read_frames"]) == result.frames >= 1


def test_truncated_stream_keeps_what_decodes(tmp_path: Path, video_factory: Callable[..., Path]) -> None:
    whole = video_factory("stream.ts", seconds=2.0, width=320, height=240).read_bytes()
    source = tmp_path / "cut.ts"
    source.write_bytes(whole[: len(whole) // 2])
    result = transcode(source, tmp_path / "out", SMALL)
    assert 0 < result.frames < 60


def _write_bad(tmp_path: Path, video_factory: Callable[..., Path], kind: str) -> Path:
    path = tmp_path / f"{kind}.mp4"
    if kind == "zero-bytes":
        path.write_bytes(b"")
    elif kind == "not-a-video":
        path.write_text("this is a text file, not a video\n" * 200)
    elif kind == "audio-only":
        return video_factory("audio-only.mp4", video=False, seconds=1.0)
    elif kind == "truncated-mp4":  # the moov box is at the end: cut it off
        data = video_factory("small.mp4", seconds=2.0, width=320, height=240).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "audio-with-cover-art":  # a music file: its one "video" stream is a still picture
        audio = video_factory("audio-only.mp4", video=False, seconds=1.0)
        cover = tmp_path / "cover.jpg"
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=red:s=64x64", "-frames:v", "1",
                        str(cover)], check=True, timeout=30)
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(audio), "-i", str(cover), "-map", "0", "-map", "1",
                        "-c", "copy", "-disposition:v", "attached_pic", str(path)], check=True, timeout=30)
    elif kind == "garbage-after-header":
        data = video_factory("small.mp4", seconds=2.0, width=320, height=240).read_bytes()
        path.write_bytes(data[:64] + bytes(range(256)) * 64)
    return path


@pytest.mark.parametrize(("kind", "reason"), [
    ("zero-bytes", "empty"),
    ("not-a-video", "not a readable media file"),
    ("audio-only", "no video stream"),
    ("audio-with-cover-art", "no video stream in source (audio only)"),
    ("truncated-mp4", "not a readable media file"),
    ("garbage-after-header", "not a readable media file"),
])
def test_bad_input_fails_with_a_reason(tmp_path: Path, video_factory: Callable[..., Path], kind: str, reason: str) -> None:
    source = _write_bad(tmp_path, video_factory, kind)
    started = time.monotonic()
    with pytest.raises(BadInputError) as failure:
        transcode(source, tmp_path / "out", SMALL)
    assert reason in failure.value.reason
    assert time.monotonic() - started < 10


def test_cancel_stops_quickly(tmp_path: Path, video_factory: Callable[..., Path]) -> None:
    source = video_factory("six.mp4", seconds=6.0, width=320, height=240)
    cancel = threading.Event()
    cancelled_at: list[float] = []

    def on_progress(progress: TranscodeProgress) -> None:
        if progress.stage == "encode" and progress.frames_done > 0 and not cancel.is_set():
            cancelled_at.append(time.monotonic())
            cancel.set()

    with pytest.raises(TranscodeCancelled) as failure:
        transcode(source, tmp_path, SMALL, on_progress=on_progress, cancel=cancel)
    assert failure.value.reason == "cancelled"
    assert time.monotonic() - cancelled_at[0] < 3
    assert not encoders_of(os.getpid())


def test_encoder_killed_mid_job_fails_with_reason(tmp_path: Path, video_factory: Callable[..., Path]) -> None:
    source = video_factory("six.mp4", seconds=6.0, width=320, height=240)
    killed: list[int] = []

    def on_progress(progress: TranscodeProgress) -> None:
        if progress.stage == "encode" and not killed:
            for pid in encoders_of(os.getpid()):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"encoder 180p" in cmdline:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

    with pytest.raises(EncoderFailedError) as failure:
        transcode(source, tmp_path, SMALL, on_progress=on_progress)
    assert killed, "the 180p encoder was never seen by its title"
    assert "encoder 180p" in failure.value.reason and "SIGKILL" in failure.value.reason


def test_worker_killed_leaves_nothing(tmp_path: Path, video_factory: Callable[..., Path]) -> None:
    """SIGKILL the process running transcode(): its encoders die with it, no ring stays."""
    source = video_factory("six.mp4", seconds=6.0, width=320, height=240)
    code = ("import sys; from pathlib import Path; "
            "from streamgate.farm.pipeline.transcode import TranscodeSettings, transcode; "
            "transcode(Path(sys.argv[1]), Path(sys.argv[2]), "
            "TranscodeSettings(ladder=[240, 180], segment_duration=1.0, preset='medium'))")
    worker = subprocess.Popen([sys.executable, "-c", code, str(source), str(tmp_path / "out")])
    try:
        wait_until(lambda: len(encoders_of(worker.pid)) == 2 and not rings_of(worker.pid), timeout=30,
                   what="both encoders running and the ring unlinked")
        encoders = encoders_of(worker.pid)
        worker.kill()
        worker.wait(10)
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in encoders),
                   timeout=10, what="orphaned encoders to die with their parent")
        assert not rings_of(worker.pid)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_settings_from_config_and_overrides() -> None:
    from streamgate.common.config import TranscoderConfig

    settings = TranscodeSettings.from_config(TranscoderConfig(), ladder=[720, 480], preset=None, crf=20)
    assert settings.ladder == [720, 480] and settings.preset == "veryfast" and settings.crf == 20
    assert settings.segment_duration == 4.0 and settings.ring_slots == 8


def test_settings_of_the_wrong_type_fail_the_job() -> None:
    from streamgate.common.config import TranscoderConfig

    with pytest.raises(TranscodeError, match=r"bad settings: .*ladder"):
        TranscodeSettings.from_config(TranscoderConfig(), ladder="tall")


def test_bad_settings_fail_the_job(tmp_path: Path, video_factory: Callable[..., Path]) -> None:
    source = video_factory("small.mp4", seconds=2.0, width=320, height=240)
    with pytest.raises(TranscodeError, match="segment_duration"):
        transcode(source, tmp_path, TranscodeSettings(ladder=[240], segment_duration=0))


@pytest.mark.slow
def test_default_ladder_on_a_720p_clip(tmp_path: Path, video_factory: Callable[..., Path]) -> None:
    """The configured default ladder (1080/720/480/360): 1080p is skipped, the rest align."""
    from streamgate.common.config import TranscoderConfig

    source = video_factory("hd.mp4", seconds=9.0, width=1280, height=720)
    result = transcode(source, tmp_path, TranscodeSettings.from_config(TranscoderConfig()))
    assert [(r.name, r.width, r.height) for r in result.renditions] == [
        ("720p", 1280, 720), ("480p", 854, 480), ("360p", 640, 360)]
    assert all(r.segments == 3 for r in result.renditions)  # 4 s segments: 4 + 4 + 1
    starts = []
    for rendition in result.renditions:
        packets = ffprobe(tmp_path / rendition.name / "index.m3u8", "-show_entries", "packet=pts_time,flags")
        starts.append([p["pts_time"] for p in packets["packets"] if "K" in p["flags"]])
    assert starts[0] == starts[1] == starts[2] and len(starts[0]) == 3


def test_the_lowest_rung_leads_the_start(tmp_path: Path, video_factory: Callable[..., Path]) -> None:
    """A player starts on the lowest rung: its first segment comes before any other rung's (the
    others' frames wait in the ring until then), the live master lists it first, and the
    ladder is still complete and conformant."""
    source = video_factory("lead.mp4", seconds=3.0, width=320, height=240)
    out = tmp_path / "out"
    published: list[tuple[str, bytes | None]] = []
    result = transcode(source, out, TranscodeSettings(ladder=[240, 180], segment_duration=1.5,
                                                      first_segment_duration=0.5),
                       publish=lambda rel, data: published.append((rel, data)))
    segments = [rel for rel, _ in published if rel.endswith(".m4s") and not rel.startswith("audio/")]
    assert segments[0] == "180p/seg-00001.m4s", segments[:4]
    masters = [data.decode() for rel, data in published if rel == "master.m3u8" and data is not None]
    live = [line for line in masters[0].splitlines() if line.endswith("index.m3u8")]
    assert live == ["180p/index.m3u8", "240p/index.m3u8"], masters[0]
    final = [line for line in masters[-1].splitlines() if line.endswith("index.m3u8")]
    assert final == ["240p/index.m3u8", "180p/index.m3u8"]
    assert result.stage_seconds["lead_first_segment"] > 0
    assert len({r.segments for r in result.renditions}) == 1 and result.renditions[0].segments >= 3
    check_ladder(out)  # raises on a ladder that is not conformant
