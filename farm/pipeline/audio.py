"""The audio rendition: resample, align to the video's start and length, AAC, CMAF segments.

Runs in the decoding process (AAC costs little next to the video rungs). The audio track is
made exactly as long as the video, give or take one AAC frame: samples before the first video
frame are dropped, a late start or an early end is filled with silence, so players see audio
and video durations agree (the gate checks it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streamgate.farm.pipeline.cmaf import aac_codecs, audio_init
from streamgate.farm.pipeline.packager import SegmentInfo, TrackSegmenter

AAC_FRAME = 1024
MAX_HOLD_S = 30.0
AAC_RATES = {8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000}


class AudioTrack:
    def __init__(self, folder: Path, *, source_rate: int, source_channels: int, bitrate: int,
                 language: str, segment_s: float, video_start_s: float, start_s: float,
                 first_segment_s: float = 0.0,
                 on_segment: Callable[[SegmentInfo], None]) -> None:
        self.rate = source_rate if source_rate in AAC_RATES else 48_000
        self.channels = 1 if source_channels == 1 else 2
        layout = "mono" if self.channels == 1 else "stereo"
        self.language = language
        self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=self.rate)
        codec = av.CodecContext.create("aac", "w")
        codec.sample_rate, codec.layout, codec.format = self.rate, layout, "fltp"
        codec.bit_rate = bitrate
        codec.time_base = Fraction(1, self.rate)
        codec.thread_type = "AUTO"
        codec.flags |= av.codec.context.Flags.global_header
        codec.open()
        self._codec = codec
        asc = bytes(codec.extradata or b"")
        self.codecs = aac_codecs(asc)
        self.segmenter = TrackSegmenter(folder, self.rate, with_cto=False)
        self.segmenter.write_init(audio_init(self.rate, self.channels, asc, bitrate, language))
        self._segment_samples = segment_s * self.rate
        # A shorter first segment (a player starts sooner); later boundaries follow it a whole
        # segment apart, as the video's do (decoder.py).
        first = first_segment_s if 0 < first_segment_s < segment_s else segment_s
        self._first_samples = first * self.rate
        # The video presents its first frame at ``start_s``; the first AAC frame is encoder
        # priming, so the track starts one frame earlier and the first real sample lines up.
        self.start_ticks = max(0, round(start_s * self.rate) - AAC_FRAME)
        self._next_boundary = 1
        self._video_start_s = video_start_s
        # Samples not yet encoded: arrays, or ints counting samples of silence (made on demand).
        self._pending: deque[np.ndarray | int] = deque()
        self._buffered = 0
        self._sent = 0  # samples handed to the encoder
        self._skip = 0  # leading samples still to drop (audio that starts before the video)
        self._started = False
        self._first_pts: int | None = None
        self._on_segment = on_segment

    def push(self, frame: av.AudioFrame, video_end_s: float) -> None:
        """Take a decoded source frame; encode what fits before ``video_end_s`` (decoded so far)."""
        if not self._started:
            self._started = True
            start = float(frame.time) if frame.time is not None else self._video_start_s
            offset = round((start - self._video_start_s) * self.rate)
            if offset > 0:  # audio starts late: lead with silence
                self._pending.append(offset)
                self._buffered += offset
            else:
                self._skip = -offset
        frame.pts = None  # the resampler follows sample counts, not the source's timestamps
        for out in self._resampler.resample(frame):
            self._append(out.to_ndarray())
        # Held back so the end can be trimmed to the video, but never more than MAX_HOLD_S
        # beyond it (a badly interleaved source must not buffer its whole soundtrack).
        excess = self._sent + self._buffered - round(MAX_HOLD_S * self.rate)
        self._encode_until(max(self._target(video_end_s), excess))

    def _append(self, samples: np.ndarray) -> None:
        if self._skip:
            dropped = min(self._skip, samples.shape[1])
            samples = samples[:, dropped:]
            self._skip -= dropped
        if samples.shape[1]:
            self._pending.append(samples.astype(np.float32, copy=False))
            self._buffered += samples.shape[1]

    def _take(self, n: int) -> np.ndarray:
        out = np.zeros((self.channels, n), dtype=np.float32)
        filled = 0
        while filled < n:
            head = self._pending[0]
            size = head if isinstance(head, int) else head.shape[1]
            k = min(n - filled, size)
            if not isinstance(head, int):
                out[:, filled:filled + k] = head[:, :k]
            if k == size:
                self._pending.popleft()
            elif isinstance(head, int):
                self._pending[0] = head - k
            else:
                self._pending[0] = head[:, k:]
            filled += k
        self._buffered -= n
        return out

    def _target(self, video_end_s: float) -> int:
        # The encoder adds one frame of priming before the first sample (it stays in the track:
        # no edit list), so the track ends one frame earlier than the video to match its length.
        return max(0, round(video_end_s * self.rate) - AAC_FRAME)

    def _encode_until(self, limit: int, final: bool = False) -> None:
        while True:
            room = limit - self._sent
            n = min(AAC_FRAME, room, self._buffered)
            if n <= 0 or (n < AAC_FRAME and not final):
                return
            frame = av.AudioFrame.from_ndarray(self._take(n), format="fltp", layout=self._codec.layout.name)
            frame.sample_rate = self.rate
            frame.pts = self._sent
            frame.time_base = self._codec.time_base
            self._sent += n
            self._mux(self._codec.encode(frame))

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            pts = packet.pts if packet.pts is not None else self._sent
            if self._first_pts is None:
                self._first_pts = pts
            t = pts - self._first_pts
            if t >= self._boundary(self._next_boundary):
                while t >= self._boundary(self._next_boundary):
                    self._next_boundary += 1
                at = self.start_ticks + t
                info = self.segmenter.boundary(bytes(packet), at, at, True)
                if info is not None:
                    self._on_segment(info)
            else:
                self.segmenter.add(bytes(packet), self.start_ticks + t, self.start_ticks + t, True)

    def _boundary(self, k: int) -> float:
        """The sample at which segment ``k`` (1-based) ends."""
        return self._first_samples + (k - 1) * self._segment_samples

    def finish(self, video_end_s: float) -> None:
        """Pad or trim to the video's length, flush the encoder, write the last segment."""
        for out in self._resampler.resample(None):
            self._append(out.to_ndarray())
        target = self._target(video_end_s)
        missing = target - self._sent - self._buffered
        if missing > 0:  # the audio ends early: fill with silence
            self._pending.append(missing)
            self._buffered += missing
        self._encode_until(target, final=True)
        self._mux(self._codec.encode(None))
        info = self.segmenter.finish(AAC_FRAME)
        if info is not None:
            self._on_segment(info)
