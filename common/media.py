"""What a transcode produces and reports: typed msgspec Structs shared by the farm pipeline, the
farm service (on the wire, msgpack) and the edge API (JSON).

Evolve them the msgspec way: new fields get defaults, never retype a field.
"""

from __future__ import annotations

import msgspec

from streamgate.common import layout


class Rendition(msgspec.Struct, frozen=True, kw_only=True):
    """One rung of the ladder as published in ``master.m3u8`` and ``manifest.mpd``."""

    name: str  # folder name under the video's media dir, e.g. "720p" or "audio"
    width: int = 0  # 0 for audio
    height: int = 0
    # Peak segment bitrate in bit/s (HLS BANDWIDTH, RFC 8216 4.3.4.2), video plus audio.
    bandwidth: int = 0
    average_bandwidth: int = 0
    codecs: str = ""  # RFC 6381, e.g. "avc1.64001f" or "mp4a.40.2"
    frame_rate: float = 0.0
    segments: int = 0
    kind: str = "video"  # "video" or "audio"


class TranscodeProgress(msgspec.Struct, frozen=True, kw_only=True):
    """A progress report; ``fraction`` is 0..1 over the whole job."""

    stage: str  # "probe", "encode", "package", "gate", "done"
    frames_done: int = 0
    frames_total: int = 0
    fraction: float = 0.0
    fps: float = 0.0
    eta_s: float = 0.0


class TranscodeResult(msgspec.Struct, frozen=True, kw_only=True):
    """A finished, gate-checked ladder in ``out_dir``."""

    duration_s: float
    renditions: list[Rendition]  # video rungs, highest first
    audio: bool = False
    audio_rendition: Rendition | None = None
    poster: str = layout.POSTER  # relative to the output dir
    master: str = layout.MASTER
    manifest: str = layout.MANIFEST
    frames: int = 0
    source_width: int = 0
    source_height: int = 0
    source_fps: float = 0.0
    # Wall seconds per stage: probe, decode, encode:<rung>, package, gate, total.
    stage_seconds: dict[str, float] = msgspec.field(default_factory=dict)
    warnings: list[str] = msgspec.field(default_factory=list)
