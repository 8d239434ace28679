"""HLS playlists (RFC 8216) over the CMAF segments: media playlists and ``master.m3u8``.

Every URI is relative (RFC 8216 4.1 resolves it against the playlist's own URI), so the edge can
serve a ladder under any prefix, signed-URL tokens included.
"""

from __future__ import annotations

import math

import msgspec

from streamgate.farm.pipeline.packager import INIT_NAME, SEGMENT_NAME, SegmentInfo

# EXT-X-MAP in a playlist without EXT-X-I-FRAMES-ONLY needs version 6 (RFC 8216 7); 7 is what
# the architecture announces.
HLS_VERSION = 7


class Variant(msgspec.Struct, frozen=True, kw_only=True):
    uri: str  # "720p/index.m3u8"
    bandwidth: int  # peak segment bit rate, video + audio (RFC 8216 4.3.4.2)
    average_bandwidth: int
    codecs: str  # "avc1.64001f,mp4a.40.2"
    width: int
    height: int
    frame_rate: float


class AudioMedia(msgspec.Struct, frozen=True, kw_only=True):
    uri: str
    language: str
    channels: int
    group: str = "audio"
    name: str = "default"


def target_duration(segment_s: float) -> int:
    """EXT-X-TARGETDURATION: every EXTINF rounded to the nearest integer must not exceed it
    (RFC 8216 4.3.3.1). It may not change while the playlist grows (6.2.1), so it is planned
    from the segment length: a segment ends at the first frame at or after its boundary, a
    fraction of a frame past it."""
    return max(1, math.ceil(segment_s))


def media_playlist(segments: list[SegmentInfo], timescale: int, target: int, *, complete: bool) -> str:
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{HLS_VERSION}",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-MEDIA-SEQUENCE:1",
        f"#EXT-X-PLAYLIST-TYPE:{'VOD' if complete else 'EVENT'}",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-MAP:URI="{INIT_NAME}"',
    ]
    for segment in segments:
        lines.append(f"#EXTINF:{segment.duration / timescale:.6f},")
        lines.append(SEGMENT_NAME.format(segment.number))
    if complete:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def master_playlist(variants: list[Variant], audio: AudioMedia | None) -> str:
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{HLS_VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    if audio is not None:
        lines.append(
            f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{audio.group}",NAME="{audio.name}",'
            f'LANGUAGE="{audio.language}",DEFAULT=YES,AUTOSELECT=YES,CHANNELS="{audio.channels}",'
            f'URI="{audio.uri}"')
    for v in variants:
        attrs = [
            f"BANDWIDTH={v.bandwidth}",
            f"AVERAGE-BANDWIDTH={v.average_bandwidth}",
            f'CODECS="{v.codecs}"',
            f"RESOLUTION={v.width}x{v.height}",
            f"FRAME-RATE={v.frame_rate:.3f}",
        ]
        if audio is not None:
            attrs.append(f'AUDIO="{audio.group}"')
        lines.append("#EXT-X-STREAM-INF:" + ",".join(attrs))
        lines.append(v.uri)
    return "\n".join(lines) + "\n"
