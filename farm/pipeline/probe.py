"""Probe a source: streams, size, rotation, frame rate, duration; decode one frame to prove it decodes."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import msgspec

from streamgate.farm.pipeline.errors import BadInputError

# A source whose first video frame is not found within this many packets is not worth a job.
_MAX_PROBE_PACKETS = 600
MAX_DIMENSION = 8192


class SourceInfo(msgspec.Struct, frozen=True, kw_only=True):
    video_index: int  # the stream the pipeline decodes (container.streams[video_index])
    width: int  # as displayed (after the display-matrix rotation)
    height: int
    coded_width: int
    coded_height: int
    rotation: int  # counterclockwise degrees from the display matrix: 0, 90, 180, -90
    pix_fmt: str
    codec: str
    fps_num: int
    fps_den: int
    time_base_num: int
    time_base_den: int
    duration_s: float
    frames_estimate: int
    video_start_s: float
    has_audio: bool = False
    audio_codec: str = ""
    audio_rate: int = 0
    audio_channels: int = 0
    audio_language: str = "und"
    audio_start_s: float = 0.0

    @property
    def fps(self) -> Fraction:
        return Fraction(self.fps_num, self.fps_den)


def video_stream(container: av.container.InputContainer) -> av.VideoStream | None:
    """The first moving-picture stream: cover art (an attached picture) is not a video."""
    for stream in container.streams.video:
        if not stream.disposition & (av.stream.Disposition.attached_pic | av.stream.Disposition.timed_thumbnails):
            return stream
    return None


def _quarter_turns(rotation: float) -> int:
    return round(rotation / 90) % 4


# Demuxers of single pictures: a photo renamed .mp4 is not a video (it made a 0.04 s one).
_IMAGE_FORMATS = ("image2", "jpeg_pipe", "png_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe")  # not gif: it moves


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if max_pixels > 0 and width * height > max_pixels:
        raise BadInputError(f"source is {width}x{height} ({width * height / 1e6:.1f} MP): over the "
                            f"limit of {max_pixels / 1e6:.1f} megapixels per picture")


def probe(source: Path, *, max_pixels: int = 0, max_duration_s: float = 0.0) -> SourceInfo:
    """Describe ``source`` or raise :class:`BadInputError` with the reason.

    ``max_pixels`` and ``max_duration_s`` (0: none) bound the cost of one job: the size the
    container declares is checked before a picture is decoded, the decoded one after.
    """
    source = Path(source)
    try:
        size = source.stat().st_size
    except OSError as exc:
        raise BadInputError(f"cannot read source: {exc.strerror or exc}") from exc
    if size == 0:
        raise BadInputError("source is empty (0 bytes)")
    try:
        container = av.open(str(source), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise BadInputError(f"not a readable media file (corrupt, truncated or not audio/video): {exc}") from exc
    with container:
        vstream = video_stream(container)
        if vstream is None:
            kind = "audio only" if container.streams.audio else "no streams"
            raise BadInputError(f"no video stream in source ({kind})")
        if vstream.codec_context is None:  # a cut or corrupt sample description: no decoder to open
            raise BadInputError(f"video stream {vstream.index} has no usable codec parameters (corrupt or truncated)")
        if container.format.name in _IMAGE_FORMATS or vstream.codec_context.name in ("mjpeg", "png") and (
                vstream.frames == 1 or container.format.name.endswith("_pipe")):
            raise BadInputError(f"source is a still image ({container.format.name}), not a video")
        _check_size(vstream.codec_context.width or 0, vstream.codec_context.height or 0, max_pixels)
        vstream.thread_type = "AUTO"
        astream = container.streams.audio[0] if container.streams.audio else None
        first = _first_frame(container, vstream)
        rotation = int(round(first.rotation or 0))
        turns = _quarter_turns(rotation)
        width, height = (first.height, first.width) if turns % 2 else (first.width, first.height)
        if min(width, height) < 2 or max(width, height) > MAX_DIMENSION:
            raise BadInputError(f"unsupported frame size {width}x{height}")
        _check_size(width, height, max_pixels)
        rate = vstream.average_rate or vstream.guessed_rate or vstream.base_rate
        if not rate or rate <= 0 or rate > 240:
            rate = Fraction(30)
        rate = Fraction(rate).limit_denominator(1001)
        tb = vstream.time_base or Fraction(1, 90000)
        duration = 0.0
        if vstream.duration is not None and vstream.duration > 0:
            duration = float(vstream.duration * tb)
        elif container.duration:
            duration = container.duration / av.time_base
        if max_duration_s > 0 and duration > max_duration_s:
            raise BadInputError(f"source is {duration:.0f} s long: longer than the limit of {max_duration_s:.0f} s")
        frames = vstream.frames or round(duration * rate)
        video_start = float(first.time) if first.time is not None else 0.0
        info: dict[str, Any] = {}  # the audio fields of SourceInfo, when there is audio
        if astream is not None and astream.codec_context is not None:
            language = (astream.metadata.get("language") or "und").strip() or "und"
            info = dict(
                has_audio=True,
                audio_codec=astream.codec_context.name,
                audio_rate=astream.codec_context.sample_rate or 0,
                audio_channels=astream.codec_context.channels or 0,
                audio_language=language if language.isalpha() and len(language) <= 8 else "und",
                audio_start_s=float(astream.start_time * astream.time_base)
                if astream.start_time is not None and astream.time_base else video_start,
            )
        return SourceInfo(
            video_index=vstream.index, width=width, height=height, coded_width=first.width, coded_height=first.height,
            rotation=rotation if turns else 0, pix_fmt=first.format.name, codec=vstream.codec_context.name,
            fps_num=rate.numerator, fps_den=rate.denominator,
            time_base_num=tb.numerator, time_base_den=tb.denominator,
            duration_s=max(duration, 0.0), frames_estimate=max(int(frames), 1),
            video_start_s=video_start, **info,
        )


def _first_frame(container: av.container.InputContainer, vstream: av.VideoStream) -> av.VideoFrame:
    try:
        for count, packet in enumerate(container.demux(vstream)):
            if count > _MAX_PROBE_PACKETS:
                break
            for frame in packet.decode():
                return frame
    except av.FFmpegError as exc:
        raise BadInputError(f"video stream does not decode: {exc}") from exc
    raise BadInputError("video stream has no decodable frame")
