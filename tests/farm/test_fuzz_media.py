"""Fuzzing the farm's inputs (issue 14): bit-flipped and truncated media of every container go
through the probe and the whole transcode; generated segment lists through the playlist and
manifest writers. Modest, derandomized example counts in ``make test``; many more behind ``slow``.

Every media outcome is a ladder or a TranscodeError with a reason: never another exception, never a
hang (a per-example timeout), never a shared-memory ring or an encoder left behind.
"""

from __future__ import annotations

import os
import tempfile
import threading
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import shm_segments, wait_until

from streamgate.common.media import TranscodeResult
from streamgate.common.synth import make_video
from streamgate.farm.pipeline.dash import AudioRepresentation, VideoRepresentation, build_mpd
from streamgate.farm.pipeline.errors import BadInputError, TranscodeError
from streamgate.farm.pipeline.gate import GateReport, _check_mpd, _timeline_count, parse_media_playlist
from streamgate.farm.pipeline.hls import media_playlist, target_duration
from streamgate.farm.pipeline.packager import SegmentInfo
from streamgate.farm.pipeline.probe import SourceInfo, probe
from streamgate.farm.pipeline.ring import RING_PREFIX
from streamgate.farm.pipeline.transcode import TranscodeSettings, transcode

QUICK = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
EXAMPLE_TIMEOUT_S = 60.0  # one transcode of a 64x48 clip takes about a second
SETTINGS = TranscodeSettings(ladder=[48], segment_duration=0.5, preset="ultrafast", stall_timeout_s=20.0)

# Container -> how synth writes a small valid file of it (webm: VP8, no AAC allowed there).
CONTAINERS = {
    "mp4": dict(codec="libx264"),
    "mov": dict(codec="libx264"),
    "mkv": dict(codec="libx264"),
    "webm": dict(codec="libvpx", audio=False),
}


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("fuzz-originals")
    return {name: make_video(folder / f"clip.{name}", seconds=1.0, width=64, height=48, fps=10,
                             **params).read_bytes()  # type: ignore[arg-type]
            for name, params in CONTAINERS.items()}


def _rings() -> set[str]:
    return {s for s in shm_segments() if s.startswith(f"{RING_PREFIX}{os.getpid()}-")}


@st.composite
def mutations(draw: st.DrawFn, size: int) -> tuple[list[tuple[int, int]], int]:
    """Bit flips (offset, mask) anywhere in the file, then a cut (``size``: none)."""
    flips = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=0, max_size=12))
    cut = draw(st.one_of(st.just(size), st.integers(0, size)))
    return flips, cut


def _mutate(data: bytes, flips: list[tuple[int, int]], cut: int) -> bytes:
    out = bytearray(data)
    for offset, mask in flips:
        out[offset] ^= mask
    return bytes(out[:cut])


def _run_with_timeout(source: Path, out_dir: Path) -> TranscodeResult | TranscodeError:
    outcome: list[object] = []
    cancel = threading.Event()

    def run() -> None:
        try:
            outcome.append(transcode(source, out_dir, SETTINGS, cancel=cancel))
        except BaseException as exc:  # noqa: BLE001 - the test judges every kind
            outcome.append(exc)

    thread = threading.Thread(target=run, name="fuzz-transcode", daemon=True)
    thread.start()
    thread.join(EXAMPLE_TIMEOUT_S)
    if thread.is_alive():
        cancel.set()
        thread.join(10)
        pytest.fail(f"transcode of a mutated file hung for {EXAMPLE_TIMEOUT_S:g} s: {source}")
    result = outcome[0]
    if isinstance(result, TranscodeResult | TranscodeError):
        return result
    raise AssertionError(f"transcode raised {type(result).__name__}, not a TranscodeError: {result}") from (
        result if isinstance(result, BaseException) else None)


def _check_one(container: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="sgfuzz-") as tmp:
        source = Path(tmp) / f"mutated.{container}"
        source.write_bytes(data)
        try:
            info = probe(source, max_pixels=SETTINGS.max_source_pixels)
        except BadInputError as exc:
            assert exc.reason.strip()
        else:
            assert isinstance(info, SourceInfo) and info.width >= 2 and info.height >= 2
        result = _run_with_timeout(source, Path(tmp) / "out")
        if isinstance(result, TranscodeError):
            assert result.reason.strip(), "a failure without a reason"
        else:
            assert result.renditions and result.duration_s > 0
        wait_until(lambda: not _rings(), timeout=10, what="the mutated file's ring to be unlinked")


@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_mutated_media_is_a_ladder_or_a_reason(container: str, originals: dict[str, bytes]) -> None:
    data = originals[container]

    @settings(max_examples=5, **QUICK)
    @given(mutations(len(data)))
    def check(mutation: tuple[list[tuple[int, int]], int]) -> None:
        _check_one(container, _mutate(data, *mutation))

    check()


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_mutated_media_long_run(container: str, originals: dict[str, bytes]) -> None:
    data = originals[container]

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mutations(len(data)))
    def check(mutation: tuple[list[tuple[int, int]], int]) -> None:
        _check_one(container, _mutate(data, *mutation))

    check()


# -- the writers ---------------------------------------------------------------------------------

@st.composite
def tracks(draw: st.DrawFn) -> tuple[int, float, list[SegmentInfo]]:
    """A timescale, a planned segment length and a contiguous list of segments around it."""
    timescale = draw(st.sampled_from([1000, 12_800, 30_000, 44_100, 48_000, 90_000]))
    segment_s = draw(st.sampled_from([0.5, 1.0, 2.0, 4.0, 6.0]))
    planned = round(segment_s * timescale)
    count = draw(st.integers(1, 40))
    start = draw(st.integers(0, 10 * timescale))
    segments = []
    for number in range(1, count + 1):
        # Most segments as planned, some longer (a VFR gap), the last one short.
        duration = draw(st.integers(max(1, planned // 20), planned * 2))
        segments.append(SegmentInfo(number=number, start=start, duration=duration,
                                    size=draw(st.integers(1, 5_000_000)), samples=draw(st.integers(1, 600))))
        start += duration
    return timescale, segment_s, segments


@settings(max_examples=40, **QUICK)
@given(tracks())
def test_media_playlists_of_any_segments_pass_the_gate_parser(track: tuple[int, float, list[SegmentInfo]]) -> None:
    timescale, segment_s, segments = track
    # As the pipeline does: the target covers the planned length and every rounded EXTINF.
    target = max([target_duration(segment_s)] + [int(s.duration / timescale + 0.5) for s in segments])
    text = media_playlist(segments, timescale, target, complete=True)
    parsed = parse_media_playlist(text, "fuzz/index.m3u8")
    assert parsed.endlist and parsed.target == target and parsed.map_uri
    assert len(parsed.segments) == len(segments)
    for (duration, uri), segment in zip(parsed.segments, segments, strict=True):
        assert round(duration) <= target  # RFC 8216 4.3.3.1, the gate's hls.extinf-over-target
        assert abs(duration - segment.duration / timescale) < 1e-5 and uri.endswith(".m4s")


@settings(max_examples=25, **QUICK)
@given(tracks(), st.booleans(), st.integers(1, 4), st.sampled_from([Fraction(30), Fraction(30000, 1001),
                                                                     Fraction(25), Fraction(60)]))
def test_manifests_of_any_segments_pass_the_gate_schema(track: tuple[int, float, list[SegmentInfo]],
                                                        with_audio: bool, rungs: int, fps: Fraction) -> None:
    timescale, segment_s, segments = track
    heights = [1080, 720, 480, 360][:rungs]
    video = [VideoRepresentation(id=f"{h}p", bandwidth=h * 4000, width=h * 16 // 9 // 2 * 2, height=h,
                                 codecs="avc1.64001f") for h in heights]
    audio = AudioRepresentation(id="audio", bandwidth=128_000, codecs="mp4a.40.2", sample_rate=48_000,
                                channels=2, language="und") if with_audio else None
    audio_segments = [SegmentInfo(number=s.number, start=s.start * 48_000 // timescale,
                                  duration=max(1, s.duration * 48_000 // timescale), size=1000, samples=10)
                      for s in segments] if with_audio else None
    duration_s = (segments[-1].start + segments[-1].duration - segments[0].start) / timescale
    text = build_mpd(duration_s=duration_s, segment_s=segment_s, fps=fps, video=video, video_timescale=timescale,
                     video_segments=segments, audio=audio, audio_segments=audio_segments,
                     start_s=segments[0].start / timescale)
    with tempfile.TemporaryDirectory(prefix="sgfuzz-mpd-") as tmp:
        (Path(tmp) / "manifest.mpd").write_text(text)
        report = GateReport()
        _check_mpd(Path(tmp), None, report, {}, None)  # the gate's schema and DASH-IF IOP rules
        assert "dash.schema" in report.rules and "dash.iop" in report.rules
    from lxml import etree

    root = etree.fromstring(text.encode())
    templates = root.findall(".//{urn:mpeg:dash:schema:mpd:2011}SegmentTemplate")
    assert all(_timeline_count(t) == len(segments) for t in templates)


def test_an_mp4_cut_inside_its_sample_description_is_bad_input(originals: dict[str, bytes], tmp_path: Path) -> None:
    # Found by test_mutated_media_long_run[mp4]: cut there, the video stream has no codec
    # context, and the probe raised AttributeError ('NoneType' object has no attribute 'name').
    data = originals["mp4"]
    stsd = data.find(b"stsd", data.rfind(b"moov"))
    assert stsd > 0
    source = tmp_path / "cut.mp4"
    for cut in range(stsd, min(len(data), stsd + 160), 3):
        source.write_bytes(data[:cut])
        try:
            probe(source)
        except BadInputError as exc:
            assert exc.reason.strip()
