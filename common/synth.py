"""Deterministic synthetic videos for tests, benchmarks and load-test seeding.

Nothing binary is committed: every clip is generated with PyAV from its parameters, so the
same call always gives the same frames (moving bars and a counter-like block, a sine tone).
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def make_video(
    path: str | Path,
    *,
    seconds: float = 2.0,
    width: int = 320,
    height: int = 240,
    fps: int = 30,
    audio: bool = True,
    video: bool = True,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    preset: str = "ultrafast",
    gop: int | None = None,
    rotate: int = 0,
    vfr: bool = False,
    sample_rate: int = 48_000,
) -> Path:
    """Write a small clip to ``path`` (the container follows the suffix) and return the path.

    ``vfr`` varies frame durations (1/2, 1 and 3/2 frame periods in turn, ``fps`` on average);
    ``rotate`` sets the display-matrix rotation a phone would write (clockwise degrees).
    """
    path = Path(path)
    if (width % 2 or height % 2) and pix_fmt == "yuv420p":
        pix_fmt = "yuv444p"  # x264 cannot subsample chroma of odd sizes; 4:4:4 keeps every pixel
    frames = max(1, round(seconds * fps)) if video else 0
    with av.open(str(path), "w") as out:
        vstream: av.VideoStream | None = None
        astream: av.AudioStream | None = None
        if video:
            added = out.add_stream(codec, rate=fps)
            assert isinstance(added, av.VideoStream)  # typed by codec name only for literals
            vstream = added
            vstream.width, vstream.height, vstream.pix_fmt = width, height, pix_fmt
            vstream.time_base = Fraction(1, fps * 2 if vfr else fps)
            # The encoder must count in the same clock, or VFR timestamps are read at half speed.
            vstream.codec_context.time_base = vstream.time_base
            options = {"preset": preset} if codec == "libx264" else {}
            if gop:
                options["g"] = str(gop)
            vstream.codec_context.options = options
            if rotate:
                vstream.metadata["rotate"] = str(rotate)
        if audio:
            astream = out.add_stream("aac", rate=sample_rate, layout="stereo")
        pts = 0
        if vstream is not None:
            ys = np.arange(height, dtype=np.int32)[:, None]
            xs = np.arange(width, dtype=np.int32)[None, :]
            for index in range(frames):
                rgb = np.empty((height, width, 3), dtype=np.uint8)
                rgb[..., 0] = ((xs + index * 4) % 256).astype(np.uint8)
                rgb[..., 1] = ((ys + index * 2) % 256).astype(np.uint8)
                rgb[..., 2] = ((xs + ys) // 2 % 256).astype(np.uint8)
                box = max(4, min(width, height) // 6)
                x0 = (index * 7) % max(1, width - box)
                rgb[:box, x0 : x0 + box] = 255
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
                frame.pts = pts
                # VFR: frames last 1, 2 and 3 half-periods in turn, so ``seconds`` still holds.
                pts += (1 + index % 3) if vfr else 1
                for packet in vstream.encode(frame):
                    out.mux(packet)
            for packet in vstream.encode(None):
                out.mux(packet)
        if astream is not None:
            total = int(seconds * sample_rate)
            chunk = 1024
            for start in range(0, total, chunk):
                n = min(chunk, total - start)
                t = (np.arange(start, start + n) / sample_rate).astype(np.float32)
                tone = (0.2 * np.sin(2 * math.pi * 440.0 * t)).astype(np.float32)
                samples = np.stack([tone, tone])
                aframe = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
                aframe.sample_rate = sample_rate
                aframe.pts = start
                for packet in astream.encode(aframe):
                    out.mux(packet)
            for packet in astream.encode(None):
                out.mux(packet)
    if rotate and vstream is not None and path.suffix.lower() in (".mp4", ".mov", ".m4v"):
        _set_display_rotation(path, rotate)
    return path


def _set_display_rotation(path: Path, rotate: int) -> None:
    """Write a phone's display matrix into the video track's ``tkhd`` (ISO/IEC 14496-12 8.3.2).

    FFmpeg's mp4 muxer no longer turns the ``rotate`` tag into a matrix, so the matrix is
    patched in place; ``rotate`` is clockwise degrees as phones and ``ffmpeg -metadata rotate``
    mean it (the same matrices as FFmpeg's movenc).
    """
    import struct

    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")  # the video stream is added first, so its track comes first
    if at < 0:
        return
    payload = at + 4
    version = data[payload]
    width, height = struct.unpack_from(">II", data, payload + (84 if version == 1 else 72))
    width, height = width >> 16, height >> 16
    one = 1 << 16
    a, b, c, d, tx, ty = {
        90: (0, one, -one, 0, height * one, 0),
        180: (-one, 0, 0, -one, width * one, height * one),
        270: (0, -one, one, 0, 0, width * one),
    }[rotate % 360]
    struct.pack_into(">9i", data, payload + (52 if version == 1 else 40), a, b, 0, c, d, 0, tx, ty, 1 << 30)
    path.write_bytes(bytes(data))
