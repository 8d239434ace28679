"""The DASH MPD (ISO/IEC 23009-1, isoff-live profile) over the same CMAF segments as HLS.

One video AdaptationSet (every rung shares the segment timeline: keyframes are aligned, so
``segmentAlignment="true"``) and one audio AdaptationSet with ``@lang``, as DASH-IF IOP asks.
Segment URLs come from a relative SegmentTemplate (``$RepresentationID$/seg-$Number%05d$.m4s``).
"""

from __future__ import annotations

import time
from fractions import Fraction
from xml.etree import ElementTree as ET

import msgspec

from streamgate.farm.pipeline.packager import SegmentInfo

MPD_NS = "urn:mpeg:dash:schema:mpd:2011"
PROFILE = "urn:mpeg:dash:profile:isoff-live:2011"


class VideoRepresentation(msgspec.Struct, frozen=True, kw_only=True):
    id: str  # the folder name
    bandwidth: int  # this track alone, peak segment bit rate
    width: int
    height: int
    codecs: str


class AudioRepresentation(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    bandwidth: int
    codecs: str
    sample_rate: int
    channels: int
    language: str


def iso_duration(seconds: float) -> str:
    return f"PT{max(seconds, 0):.3f}S"


def frame_rate_text(fps: Fraction) -> str:
    return str(fps.numerator) if fps.denominator == 1 else f"{fps.numerator}/{fps.denominator}"


def _timeline(parent: ET.Element, segments: list[SegmentInfo]) -> None:
    timeline = ET.SubElement(parent, "SegmentTimeline")
    run: ET.Element | None = None
    expected = None
    last_d = None
    repeat = 0
    for seg in segments:
        if run is not None and seg.duration == last_d and seg.start == expected:
            repeat += 1
            run.set("r", str(repeat))
        else:
            run = ET.SubElement(timeline, "S", {"t": str(seg.start), "d": str(seg.duration)})
            repeat = 0
        last_d = seg.duration
        expected = seg.start + seg.duration


def _template(parent: ET.Element, timescale: int, segments: list[SegmentInfo], start_s: float) -> None:
    # Media time ``start_s`` (the tracks' common start, see decoder.START_DELAY_FRAMES) is the
    # Period's time 0: presentationTimeOffset, ISO/IEC 23009-1 5.3.9.2.
    template = ET.SubElement(parent, "SegmentTemplate", {
        "timescale": str(timescale),
        "presentationTimeOffset": str(round(start_s * timescale)),
        "initialization": "$RepresentationID$/init.mp4",
        "media": "$RepresentationID$/seg-$Number%05d$.m4s",
        "startNumber": "1",
    })
    _timeline(template, segments)


def build_mpd(*, duration_s: float, segment_s: float, fps: Fraction, video: list[VideoRepresentation],
              video_timescale: int, video_segments: list[SegmentInfo],
              audio: AudioRepresentation | None = None, audio_segments: list[SegmentInfo] | None = None,
              complete: bool = True, start_s: float = 0.0, available_since: str = "") -> str:
    """The MPD text. ``complete=False`` gives a dynamic MPD of the segments so far (a growing
    presentation, DASH-IF IOP 4.4 "live"): ``available_since`` (ISO 8601 UTC) is when the job
    started, every segment listed stays available, clients re-read it every segment."""
    mpd = ET.Element("MPD", {
        "xmlns": MPD_NS,
        "profiles": PROFILE,
        "type": "static" if complete else "dynamic",
        "minBufferTime": iso_duration(max(2.0, segment_s)),
    })
    if complete:
        mpd.set("mediaPresentationDuration", iso_duration(duration_s))
    else:
        mpd.set("availabilityStartTime", available_since or "1970-01-01T00:00:00Z")
        mpd.set("publishTime", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        mpd.set("minimumUpdatePeriod", iso_duration(segment_s))
    period = ET.SubElement(mpd, "Period", {"id": "0", "start": "PT0S"})
    top = video[0]
    ratio = Fraction(top.width, top.height)
    vset = ET.SubElement(period, "AdaptationSet", {
        "id": "0", "contentType": "video", "mimeType": "video/mp4", "segmentAlignment": "true",
        "startWithSAP": "1", "par": f"{ratio.numerator}:{ratio.denominator}",
        "frameRate": frame_rate_text(fps), "maxWidth": str(top.width), "maxHeight": str(top.height),
    })
    _template(vset, video_timescale, video_segments, start_s)
    for rep in video:
        ET.SubElement(vset, "Representation", {
            "id": rep.id, "bandwidth": str(max(rep.bandwidth, 1)), "codecs": rep.codecs,
            "width": str(rep.width), "height": str(rep.height), "frameRate": frame_rate_text(fps),
            "sar": "1:1",
        })
    if audio is not None and audio_segments is not None:
        aset = ET.SubElement(period, "AdaptationSet", {
            "id": "1", "contentType": "audio", "mimeType": "audio/mp4", "segmentAlignment": "true",
            "startWithSAP": "1", "lang": audio.language,
        })
        _template(aset, audio.sample_rate, audio_segments, start_s)
        arep = ET.SubElement(aset, "Representation", {
            "id": audio.id, "bandwidth": str(max(audio.bandwidth, 1)), "codecs": audio.codecs,
            "audioSamplingRate": str(audio.sample_rate),
        })
        ET.SubElement(arep, "AudioChannelConfiguration", {
            "schemeIdUri": "urn:mpeg:dash:23003:3:audio_channel_configuration:2011",
            "value": str(audio.channels),
        })
    ET.indent(mpd)
    body = ET.tostring(mpd, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"


def presentation_seconds(segments: list[SegmentInfo], timescale: int) -> float:
    if not segments:
        return 0.0
    return (segments[-1].start + segments[-1].duration - segments[0].start) / timescale

