"""Just enough HLS (RFC 8216) for a load-test player: variants, audio renditions, segments."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urljoin

_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^",]*)')


class PlaylistError(Exception):
    """Not a playlist a player could use; the message says why."""


def attributes(text: str) -> dict[str, str]:
    """An attribute list (RFC 8216 section 4.2): KEY=value pairs, quoted strings unquoted."""
    return {k: v.strip('"') for k, v in _ATTR.findall(text)}


@dataclass
class Variant:
    uri: str
    bandwidth: int
    resolution: str = ""
    audio_group: str = ""


@dataclass
class Master:
    variants: list[Variant]
    audio: dict[str, str] = field(default_factory=dict)  # GROUP-ID -> URI

    def pick(self, bandwidth_bps: float, headroom: float = 0.8) -> Variant:
        """The richest variant that fits the bandwidth with headroom, else the leanest."""
        ordered = sorted(self.variants, key=lambda v: v.bandwidth)
        fitting = [v for v in ordered if v.bandwidth <= bandwidth_bps * headroom]
        return fitting[-1] if fitting else ordered[0]


@dataclass
class Segment:
    uri: str
    duration: float


@dataclass
class Media:
    segments: list[Segment]
    target_duration: float
    init_uri: str | None
    ended: bool  # EXT-X-ENDLIST: VOD; otherwise still growing (EVENT)


def _lines(text: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != "#EXTM3U":
        raise PlaylistError("does not start with #EXTM3U (RFC 8216 section 4.3.1.1)")
    return lines


def parse_master(text: str, base_url: str) -> Master:
    lines = _lines(text)
    variants: list[Variant] = []
    audio: dict[str, str] = {}
    for i, line in enumerate(lines):
        if line.startswith("#EXT-X-STREAM-INF:"):
            attrs = attributes(line.partition(":")[2])
            if i + 1 >= len(lines) or lines[i + 1].startswith("#"):
                raise PlaylistError("EXT-X-STREAM-INF without a URI line")
            variants.append(Variant(urljoin(base_url, lines[i + 1]), int(attrs.get("BANDWIDTH", "0")),
                                    attrs.get("RESOLUTION", ""), attrs.get("AUDIO", "")))
        elif line.startswith("#EXT-X-MEDIA:"):
            attrs = attributes(line.partition(":")[2])
            if attrs.get("TYPE") == "AUDIO" and "URI" in attrs:
                audio.setdefault(attrs.get("GROUP-ID", ""), urljoin(base_url, attrs["URI"]))
    if not variants:
        raise PlaylistError("a master playlist without variants")
    return Master(variants, audio)


def parse_media(text: str, base_url: str) -> Media:
    lines = _lines(text)
    segments: list[Segment] = []
    target = 0.0
    init = None
    duration: float | None = None
    for line in lines:
        if line.startswith("#EXT-X-TARGETDURATION:"):
            target = float(line.partition(":")[2])
        elif line.startswith("#EXT-X-MAP:"):
            init = urljoin(base_url, attributes(line.partition(":")[2])["URI"])
        elif line.startswith("#EXTINF:"):
            duration = float(line.partition(":")[2].split(",")[0])
        elif not line.startswith("#"):
            if duration is None:
                raise PlaylistError(f"segment {line} without EXTINF")
            segments.append(Segment(urljoin(base_url, line), duration))
            duration = None
    return Media(segments, target, init, "#EXT-X-ENDLIST" in lines)
