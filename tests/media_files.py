"""Hostile media the farm's tests generate with PyAV (nothing binary is committed)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_flat(path: Path, width: int, height: int, *, frames: int = 1, codec: str = "libx264",
               pix_fmt: str = "yuv420p") -> Path:
    """Flat grey frames: an 8000x8000 picture encodes to ~190 KB (the probe's hostile file)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "libx264":
            stream.codec_context.options = {"preset": "ultrafast"}
        frame = av.VideoFrame(width, height, pix_fmt)
        for plane in frame.planes:
            np.frombuffer(plane, dtype=np.uint8)[:] = 128
        for index in range(frames):
            frame.pts = index
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
