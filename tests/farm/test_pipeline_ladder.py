"""Ladder planning, playlist and MPD text: the pure parts of the pipeline."""

from __future__ import annotations

from fractions import Fraction

import pytest

from streamgate.farm.pipeline.dash import VideoRepresentation, build_mpd
from streamgate.farm.pipeline.hls import media_playlist, target_duration
from streamgate.farm.pipeline.ladder import plan_ladder
from streamgate.farm.pipeline.packager import SegmentInfo

CAPS = dict(peak_bitrate_1080p=5_000_000, bufsize_factor=2.0)


def test_default_ladder_on_a_1080p_source() -> None:
    rungs = plan_ladder(1920, 1080, 30, [1080, 720, 480, 360], **CAPS)
    assert [(r.name, r.width, r.height) for r in rungs] == [
        ("1080p", 1920, 1080), ("720p", 1280, 720), ("480p", 854, 480), ("360p", 640, 360)]
    assert rungs[0].maxrate == 5_000_000 and rungs[0].bufsize == 10_000_000
    assert [r.maxrate for r in rungs] == sorted((r.maxrate for r in rungs), reverse=True)


def test_rungs_above_the_source_are_skipped_never_upscaled() -> None:
    assert [r.name for r in plan_ladder(1280, 720, 30, [1080, 720, 480], **CAPS)] == ["720p", "480p"]
    # Nothing fits: the source size itself (rounded down to even) is the one rung.
    assert [(r.name, r.width, r.height) for r in plan_ladder(321, 241, 30, [1080, 720], **CAPS)] == [
        ("240p", 320, 240)]


def test_portrait_and_odd_sources_keep_their_aspect_on_even_sizes() -> None:
    portrait = plan_ladder(1080, 1920, 30, [1080, 720], **CAPS)
    assert [(r.name, r.width, r.height) for r in portrait] == [("1080p", 1080, 1920), ("720p", 720, 1280)]
    odd = plan_ladder(1278, 719, 30, [1080, 720, 480], **CAPS)
    assert [(r.width % 2, r.height % 2) for r in odd] == [(0, 0)] and odd[0].height == 480


def test_high_frame_rates_get_a_higher_cap() -> None:
    at30 = plan_ladder(1280, 720, 30, [720], **CAPS)[0].maxrate
    at60 = plan_ladder(1280, 720, 60, [720], **CAPS)[0].maxrate
    assert at60 == pytest.approx(at30 * 1.5, rel=0.01)


def test_target_duration_and_playlist_text() -> None:
    assert target_duration(4.0) == 4 and target_duration(2.5) == 3 and target_duration(0.4) == 1
    segments = [SegmentInfo(number=1, start=0, duration=4000, size=10, samples=1),
                SegmentInfo(number=2, start=4000, duration=1500, size=10, samples=1)]
    event = media_playlist(segments, 1000, 4, complete=False)
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in event and "#EXT-X-ENDLIST" not in event
    vod = media_playlist(segments, 1000, 4, complete=True).splitlines()
    assert vod[-5:] == ["#EXTINF:4.000000,", "seg-00001.m4s", "#EXTINF:1.500000,", "seg-00002.m4s",
                        "#EXT-X-ENDLIST"]


def test_mpd_timeline_repeats_equal_segments() -> None:
    segments = [SegmentInfo(number=n + 1, start=100 + n * 400, duration=400, size=1, samples=1) for n in range(5)]
    segments.append(SegmentInfo(number=6, start=2100, duration=90, size=1, samples=1))
    mpd = build_mpd(duration_s=20.9, segment_s=4, fps=Fraction(30000, 1001),
                    video=[VideoRepresentation(id="720p", bandwidth=1, width=1280, height=720, codecs="avc1.64001f")],
                    video_timescale=100, video_segments=segments, start_s=1.0)
    assert '<S t="100" d="400" r="4" />' in mpd and '<S t="2100" d="90" />' in mpd
    assert 'frameRate="30000/1001"' in mpd and 'par="16:9"' in mpd and 'presentationTimeOffset="100"' in mpd
