"""Cut one track's packets into CMAF segments on disk: ``init.mp4`` and ``seg-NNNNN.m4s``.

Every file is written to a hidden temporary name in the same folder and renamed, so a reader
(the edge, a player) never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from streamgate.common import layout
from streamgate.farm.pipeline.cmaf import Sample, media_segment

SEGMENT_NAME = "seg-{:05d}.m4s"
INIT_NAME = layout.INIT


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary name and a rename (POSIX atomic)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


class SegmentInfo(msgspec.Struct, frozen=True, kw_only=True):
    number: int  # 1-based, the file name's number
    start: int  # earliest presentation time, track timescale
    duration: int  # presentation duration, track timescale
    size: int  # bytes of the .m4s
    samples: int


class TrackSegmenter:
    """Collects one track's samples and writes them as numbered segments.

    ``add`` queues a sample, ``boundary`` queues one that starts a new segment (writing the
    previous segment), ``finish`` writes the last. A sample's duration is the next one's decode
    time minus its own, so each sample waits for its successor. Times are in the track's
    timescale: ``dts`` increases strictly, ``pts`` may differ (B-frames).
    """

    def __init__(self, folder: Path, timescale: int, *, with_cto: bool) -> None:
        self.folder = folder
        self.timescale = timescale
        self.with_cto = with_cto
        self.segments: list[SegmentInfo] = []
        self._samples: list[Sample] = []
        self._data: list[bytes] = []
        self._pts: list[int] = []
        self._base_dts: int | None = None  # decode time of the pending segment's first sample
        self._last_dts: int | None = None
        self._pending: tuple[bytes, int, int, bool] | None = None  # waits for the next dts
        folder.mkdir(parents=True, exist_ok=True)

    def write_init(self, data: bytes) -> None:
        write_atomic(self.folder / INIT_NAME, data)

    @property
    def has_samples(self) -> bool:
        return bool(self._samples) or self._pending is not None

    def add(self, data: bytes, dts: int, pts: int, sync: bool) -> None:
        """Queue a sample; its duration is known when the next one arrives (or at ``finish``)."""
        if self._last_dts is not None and dts <= self._last_dts:
            dts = self._last_dts + 1  # decode times must increase strictly (ISO 14496-12 8.6.1.2)
        if self._pending is not None:
            self._push(dts - self._pending[1])
        self._pending = (data, dts, pts, sync)
        self._last_dts = dts

    def _push(self, duration: int) -> None:
        assert self._pending is not None
        data, dts, pts, sync = self._pending
        self._pending = None
        if self._base_dts is None:
            self._base_dts = dts
        self._samples.append(Sample(size=len(data), duration=max(duration, 1), sync=sync, cto=pts - dts))
        self._data.append(data)
        self._pts.append(pts)

    def cut(self, end_pts: int | None = None) -> SegmentInfo | None:
        """Write the samples whose durations are known as the next segment; ``end_pts`` is where
        the next segment starts (default: the end of the last sample)."""
        if not self._samples:
            return None
        number = len(self.segments) + 1
        start = min(self._pts)
        end = end_pts if end_pts is not None else max(
            p + s.duration for p, s in zip(self._pts, self._samples, strict=True))
        data = media_segment(number, self._base_dts or 0, self._samples, b"".join(self._data),
                             with_cto=self.with_cto)
        write_atomic(self.folder / SEGMENT_NAME.format(number), data)
        info = SegmentInfo(number=number, start=start, duration=max(end - start, 1), size=len(data),
                           samples=len(self._samples))
        self.segments.append(info)
        self._samples, self._data, self._pts, self._base_dts = [], [], [], None
        return info

    def boundary(self, data: bytes, dts: int, pts: int, sync: bool) -> SegmentInfo | None:
        """Add a sample that starts a new segment: the samples before it become a segment."""
        if self._last_dts is not None and dts <= self._last_dts:
            dts = self._last_dts + 1
        info = None
        if self._pending is not None:
            self._push(dts - self._pending[1])
            info = self.cut(end_pts=pts)
        self._pending = (data, dts, pts, sync)
        self._last_dts = dts
        return info

    def finish(self, last_duration: int) -> SegmentInfo | None:
        """Flush: the last sample lasts ``last_duration``; write the final segment."""
        if self._pending is not None:
            self._push(last_duration)
        return self.cut()
