"""The conformance gate: it passes a real ladder and names the rule each broken ladder breaks."""

from __future__ import annotations

import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from streamgate.farm.pipeline.errors import GateError
from streamgate.farm.pipeline.gate import check_ladder, default_schema
from streamgate.farm.pipeline.transcode import TranscodeSettings, transcode

SCHEMA = default_schema()


@pytest.fixture(scope="module")
def good_ladder(tmp_path_factory: pytest.TempPathFactory, video_factory: Callable[..., Path]) -> Path:
    source = video_factory("small.mp4", seconds=2.0, width=320, height=240)
    out = tmp_path_factory.mktemp("good-ladder")
    transcode(source, out, TranscodeSettings(ladder=[240, 180], segment_duration=1.0, gate=False))
    return out


@pytest.fixture
def ladder(good_ladder: Path, tmp_path: Path) -> Path:
    """A fresh copy of the good ladder to break."""
    return Path(shutil.copytree(good_ladder, tmp_path / "ladder"))


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, count))


def test_schema_ships_in_the_package() -> None:
    """The schema is package data beside the gate (never read from outside the install)."""
    import streamgate.farm.pipeline as pipeline

    assert SCHEMA.is_file() and SCHEMA.name == "DASH-MPD.xsd"
    assert SCHEMA.parent == Path(pipeline.__file__).parent / "schemas"
    assert (SCHEMA.parent / "xlink.xsd").is_file()


def test_good_ladder_passes_every_rule(ladder: Path) -> None:
    report = check_ladder(ladder, schema=SCHEMA)
    assert "dash.schema" in report.rules and "dash.iop" in report.rules
    assert "video.keyframes-aligned" in report.rules and "av.durations" in report.rules
    assert "av.starts" in report.rules
    assert {"media:240p/index.m3u8", "media:180p/index.m3u8", "media:audio/index.m3u8"} <= set(report.rules)
    assert not report.warnings


def _break_extinf_over_target(ladder: Path) -> None:
    edit(ladder / "240p" / "index.m3u8", "#EXTINF:1.000000,", "#EXTINF:2.600000,")


def _break_missing_map(ladder: Path) -> None:
    edit(ladder / "180p" / "index.m3u8", '#EXT-X-MAP:URI="init.mp4"\n', "")


def _break_version(ladder: Path) -> None:
    edit(ladder / "180p" / "index.m3u8", "#EXT-X-VERSION:7", "#EXT-X-VERSION:3")


def _break_mpd_schema(ladder: Path) -> None:
    edit(ladder / "manifest.mpd", "<Period ", '<Bogus attribute="1" />\n  <Period ')


def _break_mpd_duration_type(ladder: Path) -> None:
    mpd = ladder / "manifest.mpd"
    mpd.write_text(re.sub(r'mediaPresentationDuration="[^"]*"', 'mediaPresentationDuration="thirty seconds"',
                          mpd.read_text()))


def _break_misaligned_keyframes(ladder: Path) -> None:
    # Move the second 180p segment one frame later: its IDR no longer lines up with 240p's.
    segment = ladder / "180p" / "seg-00002.m4s"
    data = bytearray(segment.read_bytes())
    at = data.find(b"tfdt") + 8  # version 1: a 64-bit baseMediaDecodeTime after version/flags
    (tfdt,) = struct.unpack_from(">Q", data, at)
    struct.pack_into(">Q", data, at, tfdt + 512)
    segment.write_bytes(bytes(data))


def _break_empty_segment(ladder: Path) -> None:
    (ladder / "240p" / "seg-00002.m4s").write_bytes(b"")


def _break_truncated_segment(ladder: Path) -> None:
    segment = ladder / "180p" / "seg-00001.m4s"
    segment.write_bytes(segment.read_bytes()[:-100])


def _break_missing_segment(ladder: Path) -> None:
    (ladder / "audio" / "seg-00001.m4s").unlink()


def _break_bandwidth(ladder: Path) -> None:
    master = ladder / "master.m3u8"
    master.write_text(re.sub(r"BANDWIDTH=\d+,AVERAGE", "BANDWIDTH=1000,AVERAGE", master.read_text(), count=1))


def _break_absolute_uri(ladder: Path) -> None:
    edit(ladder / "master.m3u8", "\n240p/index.m3u8", "\n/videos/x/240p/index.m3u8")


def _break_missing_codecs(ladder: Path) -> None:
    master = ladder / "master.m3u8"
    master.write_text(re.sub(r'CODECS="[^"]*",', "", master.read_text(), count=1))


def _break_audio_lang(ladder: Path) -> None:
    edit(ladder / "manifest.mpd", ' lang="und"', "")


def _break_segment_alignment(ladder: Path) -> None:
    edit(ladder / "manifest.mpd", 'segmentAlignment="true" startWithSAP="1" par=',
         'segmentAlignment="false" startWithSAP="1" par=')


def _break_sar(ladder: Path) -> None:
    edit(ladder / "manifest.mpd", ' sar="1:1"', "", count=2)


def _break_timescales(ladder: Path) -> None:
    # A second SegmentTemplate with another timescale inside the video AdaptationSet.
    edit(ladder / "manifest.mpd", '<Representation id="180p"',
         '<Representation id="180p"', 1)
    text = (ladder / "manifest.mpd").read_text()
    text = re.sub(r'(<Representation id="180p"[^>]*?)\s*/>',
                  r'\1>\n        <SegmentTemplate timescale="1000" media="180p/seg-$Number%05d$.m4s" '
                  r'initialization="180p/init.mp4" duration="1000" />\n      </Representation>', text)
    (ladder / "manifest.mpd").write_text(text)


def _break_av_durations(ladder: Path) -> None:
    # Drop the last audio segment: audio now ends a second before the video.
    playlist = ladder / "audio" / "index.m3u8"
    lines = playlist.read_text().splitlines()
    cut = lines.index("seg-00002.m4s")
    playlist.write_text("\n".join(lines[: cut - 1] + lines[cut + 1:]) + "\n")


def _break_audio_ahead(ladder: Path) -> None:
    # Every audio segment half a second later: the audio no longer starts with the video.
    for segment in sorted((ladder / "audio").glob("seg-*.m4s")):
        data = bytearray(segment.read_bytes())
        at = data.find(b"tfdt") + 8
        (tfdt,) = struct.unpack_from(">Q", data, at)
        struct.pack_into(">Q", data, at, tfdt + 24000)
        segment.write_bytes(bytes(data))


def _break_event_playlist(ladder: Path) -> None:
    edit(ladder / "240p" / "index.m3u8", "#EXT-X-PLAYLIST-TYPE:VOD", "#EXT-X-PLAYLIST-TYPE:EVENT")
    edit(ladder / "240p" / "index.m3u8", "#EXT-X-ENDLIST\n", "")


def _break_not_a_keyframe_start(ladder: Path) -> None:
    # Clear the sync flag of the first sample of a video segment (trun sample_flags).
    segment = ladder / "240p" / "seg-00001.m4s"
    data = bytearray(segment.read_bytes())
    trun = data.find(b"trun")
    flags = int.from_bytes(data[trun + 5:trun + 8], "big")
    at = trun + 4 + 4 + 4 + (4 if flags & 0x1 else 0) + (4 if flags & 0x4 else 0)
    at += 4 if flags & 0x100 else 0
    at += 4 if flags & 0x200 else 0
    struct.pack_into(">I", data, at, 0x01010000)
    segment.write_bytes(bytes(data))


@pytest.mark.parametrize(("breaker", "rule"), [
    (_break_extinf_over_target, "hls.extinf-over-target"),
    (_break_missing_map, "hls.ext-x-map"),
    (_break_version, "hls.version"),
    (_break_mpd_schema, "dash.schema"),
    (_break_mpd_duration_type, "dash.schema"),
    (_break_misaligned_keyframes, "video.keyframes-misaligned"),
    (_break_empty_segment, "media.empty-segment"),
    (_break_missing_segment, "media.missing-segment"),
    (_break_truncated_segment, "cmaf.segment"),
    (_break_bandwidth, "hls.bandwidth"),
    (_break_absolute_uri, "uri.relative"),
    (_break_missing_codecs, "hls.stream-inf-attributes"),
    (_break_audio_lang, "dash.audio-lang"),
    (_break_segment_alignment, "dash.segment-alignment"),
    (_break_sar, "dash.video-attributes"),
    (_break_timescales, "dash.timescale"),
    (_break_av_durations, "av.duration-mismatch"),
    (_break_audio_ahead, "av.start-mismatch"),
    (_break_event_playlist, "hls.vod"),
    (_break_not_a_keyframe_start, "media.segment-starts-with-keyframe"),
], ids=lambda value: getattr(value, "__name__", value).removeprefix("_break_"))
def test_broken_ladder_fails_with_the_rule(ladder: Path, breaker: Callable[[Path], None], rule: str) -> None:
    breaker(ladder)
    with pytest.raises(GateError) as failure:
        check_ladder(ladder, schema=SCHEMA)
    assert failure.value.rule == rule, failure.value.reason
    assert failure.value.reason.startswith(f"conformance gate: {rule}: ")


def test_gate_failure_fails_the_job(tmp_path: Path, video_factory: Callable[..., Path]) -> None:
    """A transcode whose output breaks a rule is a failed job naming the rule (here the MPD
    is checked against a schema that accepts no MPD at all)."""
    strict = tmp_path / "strict.xsd"
    strict.write_text('<?xml version="1.0"?>\n<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" '
                      'targetNamespace="urn:mpeg:dash:schema:mpd:2011">'
                      '<xs:element name="Nothing" type="xs:string"/></xs:schema>\n')
    source = video_factory("small.mp4", seconds=2.0, width=320, height=240)
    with pytest.raises(GateError) as failure:
        transcode(source, tmp_path / "out", TranscodeSettings(ladder=[180], segment_duration=1.0,
                                                              mpd_schema=str(strict)))
    assert failure.value.rule == "dash.schema"
