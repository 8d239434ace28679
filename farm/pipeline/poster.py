"""``poster.jpg``: one frame of the source, at most 1280 pixels wide."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streamgate.farm.pipeline.packager import write_atomic

MAX_POSTER_WIDTH = 1280


def poster_time(duration_s: float) -> float:
    """Where to take the poster: 1 s in, or a third of a shorter clip (skips black lead-ins)."""
    return min(1.0, duration_s / 3)


def write_poster(path: Path, i420: np.ndarray, width: int, height: int) -> None:
    """Encode the I420 frame ``i420`` (``width`` x ``height``) as a JPEG at ``path``."""
    w, h = width, height
    if w > MAX_POSTER_WIDTH:
        w, h = MAX_POSTER_WIDTH, max(2, round(MAX_POSTER_WIDTH * height / width / 2) * 2)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(i420), format="yuv420p")
    # JPEG is full range: "yuvj420p" makes swscale expand the video range.
    frame = frame.reformat(w, h, "yuvj420p")
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = w, h, "yuvj420p"
    codec.time_base = Fraction(1, 25)
    codec.thread_type = "AUTO"
    codec.options = {"qmin": "2", "qmax": "5"}
    packets = codec.encode(frame) + codec.encode(None)
    write_atomic(path, b"".join(bytes(p) for p in packets))
