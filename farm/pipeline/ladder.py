"""Plan the ladder: which rungs, their sizes and bitrate caps. Never upscale."""

from __future__ import annotations

import math

import msgspec

# The cap of a 1080p30 rung; other rungs scale with pixel count ** 0.75 (a rule of thumb close
# to Apple's HLS authoring table: 720p ~2.8, 480p ~1.4, 360p ~0.9 Mbit/s).
REFERENCE_PIXELS = 1920 * 1080


class Rung(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # folder name: "720p"
    width: int
    height: int
    maxrate: int  # bit/s, x264 VBV cap
    bufsize: int  # bit/s * s, x264 VBV buffer


def _even(value: float) -> int:
    return max(2, int(round(value / 2)) * 2)


def rung_size(short_side: int, width: int, height: int) -> tuple[int, int]:
    """The size of a rung whose short side is ``short_side``, keeping the display aspect."""
    if width >= height:
        return _even(short_side * width / height), _even(short_side)
    return _even(short_side), _even(short_side * height / width)


def plan_ladder(width: int, height: int, fps: float, heights: list[int], *, peak_bitrate_1080p: int,
                bufsize_factor: float) -> list[Rung]:
    """Rungs for a ``width`` x ``height`` source (display size), highest first.

    A rung is named by its short side (so a portrait 1080x1920 clip gets "1080p" too). Rungs
    above the source are skipped; if none is left the source size itself is the one rung.
    """
    short = min(width, height)
    wanted = sorted({h for h in heights if 0 < h <= short}, reverse=True)
    if not wanted:
        wanted = [short - short % 2]
    fps_factor = 1.5 if fps > 31 else 1.0
    rungs = []
    for side in wanted:
        w, h = rung_size(side, width, height)
        maxrate = int(peak_bitrate_1080p * fps_factor * ((w * h) / REFERENCE_PIXELS) ** 0.75)
        maxrate = max(maxrate, 150_000)
        rungs.append(Rung(name=f"{side}p", width=w, height=h, maxrate=maxrate,
                          bufsize=int(maxrate * bufsize_factor)))
    return rungs


def encoder_threads(rungs: list[Rung], cores: int) -> dict[str, int]:
    """x264 threads per rung when the config leaves it to us (``x264_threads: 0``).

    Every rung's encoder runs at once in its own process, so the ladder is already parallel
    across rungs: x264's own default (1.5 frame threads per core, in EVERY encoder) puts ~3x
    more threads than cores on the machine, and frame threads cost CPU (sync, duplicated
    lookahead and motion-search setup). Each rung gets its share of the cores by pixel count,
    rounded up, so the biggest rung (the critical path) can still use a spare core.
    Measured on 2 cores, 1080/720/480: ~8 % less CPU than threads=auto per encoder.
    """
    total = sum(r.width * r.height for r in rungs) or 1
    cores = max(1, cores)
    return {r.name: max(1, min(cores, math.ceil(cores * r.width * r.height / total - 0.05)))
            for r in rungs}
