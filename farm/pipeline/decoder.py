"""Demux and decode the source once; feed the ring, the encoders and the audio track.

The decoding process owns the ring: it writes slot ``n % slots`` only once every encoder has
released it (back-pressure), forces a keyframe on the first frame at or after every segment
boundary (the same frames for every rung, so IDRs align across renditions), and pumps the
encoders' events (slot releases, finished segments) while it waits.

The start is the lead's (the lowest rung, the one a player starts on and the live master lists
first): until its first segment is written, the other encoders' frame notices are held back
here, so the decoder and the lead have the CPU to themselves. The frames stay in the ring
(sized for it by the caller), so the others then encode the same frames at once; if the ring
fills first, they are let go early (never a deadlock, only a later lead).
"""

from __future__ import annotations

import logging
import selectors
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from streamgate.common.media import TranscodeProgress
from streamgate.farm.pipeline.audio import AudioTrack
from streamgate.farm.pipeline.encoder import EncoderHandle
from streamgate.farm.pipeline.encoder_protocol import (
    NOTICE,
    NOTICE_KEY,
    Attached,
    Failed,
    Finished,
    Released,
    SegmentWritten,
)
from streamgate.farm.pipeline.errors import (
    BadInputError,
    EncoderFailedError,
    ResourceLimitError,
    TranscodeCancelled,
)
from streamgate.farm.pipeline.packager import SegmentInfo
from streamgate.farm.pipeline.poster import poster_time, write_poster
from streamgate.farm.pipeline.probe import SourceInfo
from streamgate.farm.pipeline.ring import FrameRing

log = logging.getLogger(__name__)

_PUMP_INTERVAL_S = 0.2
_PROGRESS_INTERVAL_S = 0.25
# Decode errors tolerated (a truncated tail) before the source is called broken.
_MAX_DECODE_ERRORS = 50
START_DELAY_FRAMES = 2  # x264's b-pyramid delays decode by two frames


class DecodeLoop:
    def __init__(self, *, source: Path, info: SourceInfo, ring: FrameRing, encoders: list[EncoderHandle],
                 audio: AudioTrack | None, timescale: int, segment_s: float, poster_path: Path,
                 stall_timeout_s: float, cancel: threading.Event | None, decoder_threads: int = 0,
                 first_segment_s: float = 0.0, lead: EncoderHandle | None = None, window: int = 0,
                 on_progress: Callable[[TranscodeProgress], None] | None,
                 on_segment: Callable[[str, SegmentInfo, str], None]) -> None:
        self.source, self.info, self.ring, self.encoders, self.audio = source, info, ring, encoders, audio
        self.timescale = timescale
        self.segment_ticks = round(segment_s * timescale)
        # A shorter first segment lets a player start sooner; every later boundary is a whole
        # segment after the one before, on every rung alike (so keyframes stay aligned).
        first_ticks = round(first_segment_s * timescale)
        self.first_ticks = first_ticks if 0 < first_ticks < self.segment_ticks else self.segment_ticks
        self.codecs: dict[str, str] = {}  # rung -> RFC 6381 codecs, known once its encoder opened
        self.nominal = max(1, round(timescale / info.fps))
        # Every track starts presenting at this media time rather than 0: room for x264's
        # B-frame reorder delay (decode times stay >= 0 with positive composition offsets, so no
        # edit list is needed and ffmpeg, MSE and hls.js all place both tracks alike).
        self.start_ticks = START_DELAY_FRAMES * self.nominal
        self.poster_path = poster_path
        self.poster_ticks = round(poster_time(info.duration_s) * timescale)
        self.stall_timeout_s = stall_timeout_s
        self.decoder_threads = decoder_threads
        self.cancel = cancel
        self.on_progress = on_progress
        self.on_segment = on_segment
        self.pending = [0] * ring.slots  # encoders that have not released each slot yet
        self.released = {e.name: 0 for e in encoders}
        self.finished: dict[str, Finished] = {}
        self.attached: set[str] = set()
        self.frames = 0
        self.decode_s = 0.0
        self.wait_s = 0.0
        self.audio_s = 0.0
        self.video_end_ticks = 0
        self.warnings: list[str] = []
        self._selector = selectors.DefaultSelector()
        for e in encoders:
            self._selector.register(e.fd, selectors.EVENT_READ, e)
        self._last_event = time.monotonic()
        self._last_progress = 0.0
        self._started = time.monotonic()
        self._reformatter = VideoReformatter()
        self._prev_ticks: int | None = None
        self._first_pts: int | None = None
        self._next_boundary = 0
        self._poster_done = False
        # Until the lead's first segment: the poster waits as a copy (its JPEG encode would
        # compete with the lead), and every other encoder's notices wait in ``_held``.
        self._poster_frame: np.ndarray | None = None
        self.lead = lead if lead is not None and len(encoders) > 1 else None
        self._held: dict[str, bytearray] = {e.name: bytearray() for e in encoders
                                             if self.lead is not None and e is not self.lead}
        self.lead_first_s = 0.0  # seconds from the decode's start to the lead's first segment
        # Frames in flight once the lead's first segment is out: the ring's extra slots were for
        # it; left open, the decoder and the lead would run ~a ring ahead, taking the CPU the
        # other rungs need for their own first segments.
        self.window = window if 0 < window < ring.slots else ring.slots

    # --- encoder events --------------------------------------------------------------------------

    def pump(self, timeout: float = _PUMP_INTERVAL_S) -> None:
        """Handle encoder events (waiting up to ``timeout``); raise if one died, stalled, or the
        job was cancelled."""
        if self.cancel is not None and self.cancel.is_set():
            raise TranscodeCancelled()
        ready = self._selector.select(timeout) if self._selector.get_map() else []
        for key, _ in ready:
            encoder: EncoderHandle = key.data
            for event in encoder.read_events():
                self._last_event = time.monotonic()
                match event:
                    case Released(slot=slot):
                        self.pending[slot] -= 1
                        self.released[encoder.name] += 1
                    case SegmentWritten(segment=segment, codecs=codecs):
                        self.on_segment(encoder.name, segment, codecs)
                        self._last_progress = 0.0  # report now: a new segment is playable
                        if encoder is self.lead:
                            self.release_held()
                    case Finished():
                        self.finished[encoder.name] = event
                        if encoder is self.lead:
                            self.release_held()
                    case Attached(codecs=codecs):
                        self.attached.add(encoder.name)
                        if codecs:
                            self.codecs[encoder.name] = codecs
                        if len(self.attached) == len(self.encoders):
                            # Every encoder has the ring mapped: drop its name, so from here on
                            # nothing can leak whatever dies (a mapping outlives its name).
                            self.ring.unlink()
                    case Failed(reason=reason, resource_limit=limit):
                        raise (ResourceLimitError if limit else EncoderFailedError)(reason)
            if encoder.eof:
                self._selector.unregister(encoder.fd)
                if encoder.name not in self.finished:
                    try:
                        encoder.proc.wait(2)
                    except Exception:  # noqa: BLE001 - still running: reported as not answering
                        pass
                    raise encoder.death_error()
        if time.monotonic() - self._last_event > self.stall_timeout_s:
            raise EncoderFailedError(f"encoders made no progress for {self.stall_timeout_s:.0f} s")
        self._report()

    def release_held(self) -> None:
        """The lead's first segment is out (or the ring is full, or the stream ended): every
        other encoder gets the notices held for it, and all notices from now on."""
        if self.lead is None:
            return
        if not self.lead_first_s:
            self.lead_first_s = time.monotonic() - self._started
        self.lead = None
        held, self._held = self._held, {}
        for encoder in self.encoders:
            if held.get(encoder.name):
                encoder.write(bytes(held[encoder.name]))
        if self._poster_frame is not None:
            frame, self._poster_frame = self._poster_frame, None
            write_poster(self.poster_path, frame, self.ring.width, self.ring.height)

    def wait_attached(self) -> None:
        """Decoding need not wait for this (notices queue in the pipes while encoders start);
        the end of the stream does, so the ring's name is gone before the job ends."""
        while len(self.attached) < len(self.encoders):
            self.pump()

    def close(self) -> None:
        """Release the event selector (a worker runs many jobs: no fd may leak per job)."""
        self._selector.close()

    def wait_finished(self) -> None:
        while len(self.finished) < len(self.encoders):
            self.pump()

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.on_progress is None or (not force and now - self._last_progress < _PROGRESS_INTERVAL_S):
            return
        self._last_progress = now
        total = max(self.info.frames_estimate, self.frames)
        done = min(self.released.values(), default=self.frames)
        elapsed = max(now - self._started, 1e-6)
        fps = done / elapsed
        eta = (total - done) / fps if fps > 0 else 0.0
        self.on_progress(TranscodeProgress(stage="encode", frames_done=done, frames_total=total,
                                           fraction=min(0.95, 0.95 * done / total), fps=fps, eta_s=eta))

    # --- decoding --------------------------------------------------------------------------------

    def run(self) -> None:
        """Decode every frame into the ring; then tell the encoders the stream has ended."""
        errors = 0
        try:
            container = av.open(str(self.source), metadata_errors="ignore")
        except av.FFmpegError as exc:
            raise BadInputError(f"not a readable media file: {exc}") from exc
        with container:
            vstream = container.streams[self.info.video_index]
            assert isinstance(vstream, av.VideoStream)
            vstream.thread_type = "AUTO"  # frame + slice threads (issue 3: SLICE alone is ~1.6x slower)
            # 0 = libavcodec's choice (cores + 1 frame threads). When the encoders already keep
            # every core busy the caller passes 1: decode is then off the critical path, and
            # frame threads only add CPU (1080p H.264 here: ~1.3 s CPU per 10 s single-threaded
            # against ~1.55 s with threads).
            vstream.thread_count = self.decoder_threads
            streams: list[av.stream.Stream] = [vstream]
            astream = container.streams.audio[0] if self.audio is not None else None
            if astream is not None:
                astream.codec_context.thread_type = "AUTO"
                streams.append(astream)
            tb = vstream.time_base or Fraction(1, 90000)
            try:
                for packet in container.demux(*streams):
                    started = time.monotonic()
                    try:
                        frames = packet.decode()
                    except av.FFmpegError as exc:
                        errors += 1
                        if errors > _MAX_DECODE_ERRORS:
                            raise BadInputError(f"source does not decode: {exc}") from exc
                        continue
                    if packet.stream is vstream:
                        self.decode_s += time.monotonic() - started
                        for frame in frames:
                            if isinstance(frame, av.VideoFrame):
                                self._put_video(frame, tb)
                    elif self.audio is not None:
                        for aframe in frames:
                            if isinstance(aframe, av.AudioFrame):
                                self.audio.push(aframe, self.video_end_ticks / self.timescale)
                        self.audio_s += time.monotonic() - started
                # demux() ends each stream with an empty packet, whose decode() flushed the decoder.
            except av.FFmpegError as exc:
                # A truncated file ends in a demux error: keep what decoded, if anything did.
                self.warnings.append(f"source ended with an error: {exc}")
        if self.frames == 0:
            raise BadInputError("no video frame could be decoded")
        self.release_held()
        for encoder in self.encoders:
            encoder.end(self.nominal)
        if self.audio is not None:
            started = time.monotonic()
            self.audio.finish(self.video_end_ticks / self.timescale)
            self.audio_s += time.monotonic() - started

    def _ticks(self, frame: av.VideoFrame, tb: Fraction) -> int | None:
        if frame.pts is None:
            return None if self._prev_ticks is None else self._prev_ticks + self.nominal
        if self._first_pts is None:
            self._first_pts = frame.pts
        rel = frame.pts - self._first_pts
        if tb.numerator == 1 and tb.denominator == self.timescale:
            return rel
        return round(rel * tb * self.timescale)

    def _put_video(self, frame: av.VideoFrame, tb: Fraction) -> None:
        ticks = self._ticks(frame, tb)
        if ticks is None:
            ticks = 0
        if ticks < 0 or (self._prev_ticks is not None and ticks <= self._prev_ticks):
            return  # a duplicate or out-of-order timestamp: the frame would have no duration
        key = self._prev_ticks is None or ticks >= self._next_boundary
        if key:
            after = ticks - self.first_ticks
            self._next_boundary = self.first_ticks + (0 if after < 0 else (after // self.segment_ticks + 1)
                                                      * self.segment_ticks)
        self._prev_ticks = ticks
        slot = self.frames % self.ring.slots
        waited = time.monotonic()
        if self.pending[slot] > 0 and self._held:
            self.release_held()  # the ring is full of frames the held encoders need
        while self.pending[slot] > 0:
            self.pump()
        if self.lead is None and self.window < self.ring.slots:
            while self.frames - min(self.released.values(), default=self.frames) >= self.window:
                self.pump()
        started = time.monotonic()
        self.wait_s += started - waited
        self._to_ring(frame, slot)
        if not self._poster_done and (self.frames == 0 or ticks >= self.poster_ticks):
            self._poster_done = ticks >= self.poster_ticks
            if self.lead is not None:
                self._poster_frame = self.ring.slot(slot).copy()
            else:
                write_poster(self.poster_path, self.ring.slot(slot), self.ring.width, self.ring.height)
        live = [e for e in self.encoders if not e.closed_input]
        self.pending[slot] = len(live)
        flags = NOTICE_KEY if key else 0
        for encoder in live:
            held = self._held.get(encoder.name)
            if held is not None:
                held += NOTICE.pack(slot, self.start_ticks + ticks, self.nominal, flags)
            else:
                encoder.notice(slot, self.start_ticks + ticks, self.nominal, flags)
        self.frames += 1
        self.video_end_ticks = ticks + self.nominal
        self.decode_s += time.monotonic() - started
        self.pump(0)

    def _to_ring(self, frame: av.VideoFrame, slot: int) -> None:
        ring = self.ring
        turns = round(self.info.rotation / 90) % 4
        width, height = (ring.height, ring.width) if turns % 2 else (ring.width, ring.height)
        if frame.format.name != "yuv420p" or frame.width != width or frame.height != height:
            frame = self._reformatter.reformat(frame, width, height, "yuv420p")
        y, u, v = ring.planes(slot)
        for index, dst in enumerate((y, u, v)):
            plane = frame.planes[index]
            rows, cols = (height, width) if index == 0 else (height // 2, width // 2)
            src = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(-1, plane.line_size)[:rows, :cols]
            np.copyto(dst, np.rot90(src, turns) if turns else src)
