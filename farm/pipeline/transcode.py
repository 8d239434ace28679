"""The public API of the farm pipeline: :func:`transcode` one source into a gate-checked ladder.

probe -> plan the ladder -> decode once into a shared-memory ring -> one encoder process per
rung (scale + libx264 + CMAF) -> audio (AAC) alongside -> playlists, MPD, poster -> the gate.
The farm worker calls this from inside a worker process, possibly off its main thread; the
``streamgate transcode`` command calls the same function.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import msgspec

from streamgate.common.config import TranscoderConfig
from streamgate.common.layout import AUDIO_FOLDER, MANIFEST, MASTER, POSTER
from streamgate.common.layout import MEDIA_PLAYLIST as PLAYLIST
from streamgate.common.media import Rendition, TranscodeProgress, TranscodeResult
from streamgate.farm.pipeline import encoder_pool
from streamgate.farm.pipeline.audio import AudioTrack
from streamgate.farm.pipeline.dash import (
    AudioRepresentation,
    VideoRepresentation,
    build_mpd,
    presentation_seconds,
)
from streamgate.farm.pipeline.decoder import START_DELAY_FRAMES, DecodeLoop
from streamgate.farm.pipeline.encoder import EncoderHandle
from streamgate.farm.pipeline.encoder_protocol import EncoderJob
from streamgate.farm.pipeline.errors import (
    BadInputError,
    BadSettingsError,
    EncoderFailedError,
    GateError,
    ResourceLimitError,
    TranscodeCancelled,
    TranscodeError,
)
from streamgate.farm.pipeline.gate import check_ladder
from streamgate.farm.pipeline.hls import AudioMedia, Variant, master_playlist, media_playlist, target_duration
from streamgate.farm.pipeline.ladder import Rung, encoder_threads, plan_ladder
from streamgate.farm.pipeline.limits import memory_error_reason
from streamgate.farm.pipeline.packager import INIT_NAME, SEGMENT_NAME, SegmentInfo, write_atomic
from streamgate.farm.pipeline.probe import SourceInfo, probe
from streamgate.farm.pipeline.ring import FrameRing, frame_bytes

__all__ = [
    "BadInputError", "EncoderFailedError", "GateError", "TranscodeCancelled", "TranscodeError",
    "TranscodeSettings", "transcode",
]

log = logging.getLogger(__name__)

# Called with each output's path relative to out_dir as soon as it is complete on disk, in an
# order in which no playlist names a file not published before it: a playlist or manifest comes
# with its bytes (the file may be rewritten before an uploader reads it), a segment, init or
# poster with None (immutable once renamed into place). A fleet's worker uploads from it
# (farm/publish.py); it must not block, and may raise to fail the transcode.
Publish = Callable[[str, bytes | None], None]

_MAX_SPARES = 8  # encoder processes started before the ladder is known
# The ring holds the lead rung's first segment plus x264's delay (lookahead + B-frames, ~14
# frames at veryfast) while the other rungs wait for it (farm/pipeline/decoder.py), up to this
# much shared memory; past that the others start early rather than the ring growing.
_LEAD_DELAY_FRAMES = 24
_LEAD_RING_BYTES = 256 * 1024 * 1024


class TranscodeSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a transcode needs to know; built from ``config.transcoder`` plus overrides."""

    ladder: list[int] = msgspec.field(default_factory=lambda: [1080, 720, 480, 360])
    preset: str = "veryfast"
    segment_duration: float = 4.0
    first_segment_duration: float = 1.0  # 0 or >= segment_duration: as long as the rest
    crf: int = 23
    audio_bitrate: int = 128_000
    ring_slots: int = 8
    peak_bitrate_1080p: int = 5_000_000
    bufsize_factor: float = 2.0
    x264_threads: int = 0
    x264_params: str = ""
    stall_timeout_s: float = 120.0
    gate: bool = True
    max_source_pixels: int = 4096 * 2304  # 0: no limit
    max_source_duration: float = 24 * 3600.0  # seconds; 0: no limit
    min_decoded_ratio: float = 0.9  # decoded / declared duration below this: truncated; 0: off
    memory_limit: int = 0  # RLIMIT_AS bytes of each encoder process; 0: none
    cpu_limit_s: float = 0.0  # RLIMIT_CPU seconds of each encoder process; 0: none
    mpd_schema: str = ""  # empty: the DASH-MPD.xsd shipped in farm/pipeline/schemas/

    @classmethod
    def from_config(cls, transcoder: TranscoderConfig, **overrides: Any) -> TranscodeSettings:
        values: dict[str, Any] = {
            "ladder": list(transcoder.ladder),
            "preset": transcoder.preset,
            "segment_duration": float(transcoder.segment_duration),
            "first_segment_duration": float(getattr(transcoder, "first_segment_duration", 1.0)),
            "crf": transcoder.crf,
            "audio_bitrate": transcoder.audio_bitrate,
            "ring_slots": transcoder.ring_slots,
        }
        for name in ("peak_bitrate_1080p", "bufsize_factor", "x264_threads", "x264_params", "mpd_schema",
                     "max_source_pixels", "min_decoded_ratio"):
            if hasattr(transcoder, name):
                values[name] = getattr(transcoder, name)
        if hasattr(transcoder, "worker_memory_limit"):
            values["memory_limit"] = int(transcoder.worker_memory_limit)
            values["cpu_limit_s"] = float(transcoder.cpu_time_limit_per_job)
        if hasattr(transcoder, "max_source_duration"):
            values["max_source_duration"] = float(transcoder.max_source_duration)
        if hasattr(transcoder, "encoder_stall_timeout"):
            values["stall_timeout_s"] = float(transcoder.encoder_stall_timeout)
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return msgspec.convert(values, cls)
        except msgspec.ValidationError as exc:  # job settings come from the wire: a failed job, not a crash
            raise BadSettingsError(f"bad settings: {exc}") from exc


def _timescale(info: SourceInfo) -> int:
    # Keep the source's clock when it is 1/N (no rounding of VFR timestamps), else 90 kHz.
    if info.time_base_num == 1 and 1000 <= info.time_base_den <= 1_000_000:
        return info.time_base_den
    return 90_000


def _clear_outputs(out_dir: Path, names: list[str]) -> None:
    """Remove what an earlier attempt left (a retried job writes the same names)."""
    for name in [*names, AUDIO_FOLDER]:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
    for name in (MASTER, MANIFEST, POSTER):
        (out_dir / name).unlink(missing_ok=True)


class _Track(msgspec.Struct):
    segments: list[SegmentInfo]
    timescale: int

    def peak_bps(self) -> int:
        return max((round(s.size * 8 * self.timescale / s.duration) for s in self.segments), default=0)

    def average_bps(self) -> int:
        seconds = sum(s.duration for s in self.segments) / self.timescale
        return round(sum(s.size for s in self.segments) * 8 / seconds) if seconds else 0


def transcode(source: Path, out_dir: Path, settings: TranscodeSettings, *,
              on_progress: Callable[[TranscodeProgress], None] | None = None,
              cancel: threading.Event | None = None, publish: Publish | None = None) -> TranscodeResult:
    """Transcode ``source`` into a CMAF ladder in ``out_dir``; raise :class:`TranscodeError`
    (with ``.reason``) on bad input, encoder failure, cancellation or a gate failure.

    Nothing outlives the call: encoder processes are joined (killed if need be) and the
    shared-memory ring is unlinked, whatever happens. Safe to call from any thread of any
    process (encoders are plain subprocesses, not multiprocessing children).
    """
    # Encoder processes start now, before probing: their interpreter start and imports (~0.2 s
    # CPU each) overlap the probe on the other core; each gets its job once the ladder is planned.
    # A farm worker keeps them warm across jobs (encoder_pool): then nothing starts here at all.
    spares = encoder_pool.take(min(max(1, len(set(settings.ladder))), _MAX_SPARES))
    try:
        return _transcode(Path(source), Path(out_dir), settings, on_progress, cancel, spares, publish)
    except TranscodeError:
        raise
    except Exception as exc:
        if isinstance(exc, MemoryError) or isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
            # RLIMIT_AS of this process (transcoder.worker_memory_limit): the same source would
            # reach it again. av.error.MemoryError is a MemoryError; a ring's mmap says ENOMEM.
            raise ResourceLimitError(memory_error_reason(exc, settings.memory_limit)) from exc
        # An unforeseen failure (disk full, a codec error) is still a failed job.
        log.exception("transcode of %s failed", source)
        raise TranscodeError(f"transcode failed: {type(exc).__name__}: {exc}") from exc
    finally:
        for spare in spares:  # never given a job (fewer rungs, or the job failed first)
            if not encoder_pool.give_back(spare):
                spare.kill()
                spare.stop()


def _transcode(source: Path, out_dir: Path, settings: TranscodeSettings,
               on_progress: Callable[[TranscodeProgress], None] | None,
               cancel: threading.Event | None, spares: list[EncoderHandle],
               publish: Publish | None = None) -> TranscodeResult:
    started = time.monotonic()
    stages: dict[str, float] = {}
    emit = _Emitter(out_dir, publish)

    def report(stage: str, fraction: float, frames: int = 0) -> None:
        if on_progress is not None:
            on_progress(TranscodeProgress(stage=stage, fraction=fraction, frames_done=frames,
                                          frames_total=frames))

    report("probe", 0.0)
    info = probe(source, max_pixels=settings.max_source_pixels, max_duration_s=settings.max_source_duration)
    stages["probe"] = time.monotonic() - started
    if cancel is not None and cancel.is_set():
        raise TranscodeCancelled()
    if settings.segment_duration <= 0 or settings.ring_slots < 2:
        raise BadSettingsError("bad settings: segment_duration must be > 0 and ring_slots >= 2")
    rungs = plan_ladder(info.width, info.height, float(info.fps), settings.ladder,
                        peak_bitrate_1080p=settings.peak_bitrate_1080p, bufsize_factor=settings.bufsize_factor)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_outputs(out_dir, [r.name for r in rungs])
    timescale = _timescale(info)
    if info.duration_s < 2 * settings.segment_duration:
        # A clip this short is ready about as soon as a short first segment would be; and its
        # last segment, ~1 s with B-frames, sits at the edge of the gate's EXTINF tolerance.
        settings = msgspec.structs.replace(settings, first_segment_duration=0.0)
    target = target_duration(settings.segment_duration)
    video_segments: dict[str, list[SegmentInfo]] = {r.name: [] for r in rungs}
    audio_segments: list[SegmentInfo] = []

    video_codecs: dict[str, str] = {}
    available_since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    live_master = False

    def publish_live_master() -> None:
        """A master playlist lets players start while the job runs: published once the audio
        and ANY rung have a first segment (the rung a player starts on is usually the lowest,
        which is done first), and every rung's codecs are known (sent as its x264 opens). A
        player switching to a rung not yet published gets a 404 and retries; by the time its
        bandwidth estimate allows a switch, every rung has segments. BANDWIDTH is the VBV cap
        there (x264 keeps segments under it); the final master states measured peaks."""
        nonlocal live_master
        if info.has_audio and not audio_segments:
            return
        if all(video_segments.values()):
            publish_live_mpd()  # the MPD's SegmentTimeline is shared: it waits for every rung
        if live_master or not any(video_segments.values()):
            return
        known = {**(loop.codecs if loop is not None else {}), **video_codecs}
        if any(r.name not in known for r in rungs):
            return
        live_master = True
        audio_codecs = f",{audio.codecs}" if audio is not None else ""
        extra = int(settings.audio_bitrate * 1.1) if audio is not None else 0
        # Lowest first: a player without a bandwidth estimate starts on the first variant
        # (hls.js's firstLevel, Apple's players), and the lowest rung is the one ready first.
        variants = [Variant(uri=f"{r.name}/{PLAYLIST}", bandwidth=int(r.maxrate * 1.1) + extra,
                            average_bandwidth=r.maxrate + extra, codecs=known[r.name] + audio_codecs,
                            width=r.width, height=r.height, frame_rate=float(info.fps)) for r in reversed(rungs)]
        media = AudioMedia(uri=f"{AUDIO_FOLDER}/{PLAYLIST}", language=audio.language,
                           channels=audio.channels) if audio is not None else None
        emit.text(MASTER, master_playlist(variants, media))
        log.info("%s: live master.m3u8 published %.2f s after the job's start", out_dir.name,
                 time.monotonic() - started)

    def publish_live_mpd() -> None:
        """A dynamic MPD of the segments every rung has so far (the static one replaces it)."""
        count = min(len(s) for s in video_segments.values())
        reps = [VideoRepresentation(id=r.name, bandwidth=r.maxrate, width=r.width, height=r.height,
                                    codecs=video_codecs[r.name]) for r in rungs]
        audio_rep = AudioRepresentation(
            id=AUDIO_FOLDER, bandwidth=settings.audio_bitrate, codecs=audio.codecs, sample_rate=audio.rate,
            channels=audio.channels, language=audio.language) if audio is not None else None
        emit.text(MANIFEST, build_mpd(
            duration_s=0, segment_s=settings.segment_duration, fps=info.fps, video=reps, video_timescale=timescale,
            video_segments=video_segments[rungs[0].name][:count], audio=audio_rep, audio_segments=audio_segments,
            complete=False, start_s=start_s, available_since=available_since))

    def on_segment(name: str, segment: SegmentInfo, codecs: str) -> None:
        video_segments[name].append(segment)
        video_codecs[name] = codecs
        emit.segment(name, segment)
        emit.text(f"{name}/{PLAYLIST}", media_playlist(video_segments[name], timescale, target, complete=False))
        publish_live_master()

    def on_audio_segment(segment: SegmentInfo) -> None:
        audio_segments.append(segment)
        emit.segment(AUDIO_FOLDER, segment)
        emit.text(f"{AUDIO_FOLDER}/{PLAYLIST}", media_playlist(audio_segments, audio_rate, target, complete=False))
        publish_live_master()

    audio_rate = info.audio_rate  # replaced by the AAC track's rate once it exists
    start_s = START_DELAY_FRAMES * max(1, round(timescale / info.fps)) / timescale
    ring_width, ring_height = info.width - info.width % 2, info.height - info.height % 2
    encoders: list[EncoderHandle] = []
    audio: AudioTrack | None = None
    loop: DecodeLoop | None = None
    cores = len(os.sched_getaffinity(0))
    threads = encoder_threads(rungs, cores) if settings.x264_threads <= 0 else {}
    slots = _ring_slots(settings, float(info.fps), frame_bytes(ring_width, ring_height), len(rungs))
    with FrameRing(ring_width, ring_height, slots) as ring:
        try:
            for rung in rungs:
                (out_dir / rung.name).mkdir(parents=True, exist_ok=True)
                encoder = spares.pop() if spares else EncoderHandle()
                encoders.append(encoder)
                encoder.assign(_job(rung, out_dir, ring, info, timescale, settings, threads.get(rung.name, 0)))
            if info.has_audio:
                audio = AudioTrack(out_dir / AUDIO_FOLDER, source_rate=info.audio_rate,
                                   source_channels=info.audio_channels, bitrate=settings.audio_bitrate,
                                   language=info.audio_language, segment_s=settings.segment_duration,
                                   video_start_s=info.video_start_s, on_segment=on_audio_segment,
                                   start_s=start_s, first_segment_s=settings.first_segment_duration)
                audio_rate = audio.rate
            loop = DecodeLoop(source=source, info=info, ring=ring, encoders=encoders, audio=audio,
                              timescale=timescale, segment_s=settings.segment_duration,
                              poster_path=out_dir / POSTER, stall_timeout_s=settings.stall_timeout_s,
                              cancel=cancel, on_progress=on_progress, on_segment=on_segment,
                              decoder_threads=1 if cores <= len(rungs) + 1 else 0,
                              first_segment_s=settings.first_segment_duration, lead=encoders[-1],
                              window=settings.ring_slots)
            decode_started = time.monotonic()
            loop.run()  # starts at once: frame notices wait in the pipes while encoders start
            loop.wait_attached()
            loop.wait_finished()
            stages["decode"] = loop.decode_s
            if loop.lead_first_s:
                stages["lead_first_segment"] = loop.lead_first_s
            stages["ring_wait"] = loop.wait_s
            if audio is not None:
                stages["audio"] = loop.audio_s
            for name, done in loop.finished.items():
                stages[f"encode:{name}"] = done.encode_s
                stages[f"encode_cpu:{name}"] = done.cpu_s
            stages["pipeline"] = time.monotonic() - decode_started
        finally:
            if loop is not None:
                loop.close()
            for encoder in encoders:
                if encoder.proc.poll() is None and not _finished(encoder, loop):
                    encoder.kill()
            for encoder in encoders:
                if not (_finished(encoder, loop) and encoder_pool.give_back(encoder)):
                    encoder.stop()
    assert loop is not None
    _check_complete(info, video_segments[rungs[0].name], timescale, settings.min_decoded_ratio)
    report("package", 0.96, loop.frames)
    packaged = time.monotonic()
    result = _package(emit, info, rungs, loop, video_segments, timescale, audio, audio_segments,
                      settings, target)
    stages["package"] = time.monotonic() - packaged
    if settings.gate:
        report("gate", 0.98, loop.frames)
        gated = time.monotonic()
        gate = check_ladder(out_dir, schema=settings.mpd_schema or None)
        stages["gate"] = time.monotonic() - gated
        loop.warnings.extend(gate.warnings)
    stages["total"] = time.monotonic() - started
    report("done", 1.0, loop.frames)
    return msgspec.structs.replace(result, stage_seconds=stages, warnings=loop.warnings)


def _ring_slots(settings: TranscodeSettings, fps: float, slot_bytes: int, rungs: int) -> int:
    """``ring_slots``, or enough for the lead rung's first segment when there are other rungs
    to hold back and the memory allows it."""
    first_s = settings.first_segment_duration
    if rungs < 2 or not 0 < first_s < settings.segment_duration:
        return settings.ring_slots
    wanted = int(first_s * fps + 0.999) + _LEAD_DELAY_FRAMES
    return max(settings.ring_slots, min(wanted, _LEAD_RING_BYTES // max(1, slot_bytes)))


def _check_complete(info: SourceInfo, segments: list[SegmentInfo], timescale: int,
                    min_ratio: float) -> None:
    """No half video called ready: a source that decodes to much less than it declares (a cut
    upload whose index survived) fails with the reason. (A photo is refused by the probe; a
    one-frame video stream is a video, as its encoder meant it.)"""
    decoded = presentation_seconds(segments, timescale) if segments else 0.0
    declared = info.duration_s
    if min_ratio > 0 and declared > 0 and decoded < declared * min_ratio:
        raise BadInputError(f"source declares {declared:.1f} s but decodes to {decoded:.1f} s "
                            f"({decoded / declared:.0%}): truncated or corrupt")


def _finished(encoder: EncoderHandle, loop: DecodeLoop | None) -> bool:
    return loop is not None and encoder.name in loop.finished


def _job(rung: Rung, out_dir: Path, ring: FrameRing, info: SourceInfo, timescale: int,
         settings: TranscodeSettings, threads: int) -> EncoderJob:
    fps = info.fps
    return EncoderJob(
        name=rung.name, folder=str(out_dir / rung.name), ring_name=ring.name, ring_width=ring.width,
        ring_height=ring.height, ring_slots=ring.slots, width=rung.width, height=rung.height,
        timescale=timescale, fps_num=fps.numerator, fps_den=fps.denominator,
        gop=max(1, round(settings.segment_duration * float(fps))), preset=settings.preset,
        crf=settings.crf, maxrate=rung.maxrate, bufsize=rung.bufsize,
        threads=settings.x264_threads if settings.x264_threads > 0 else threads,
        x264_params=settings.x264_params, parent_pid=os.getpid(),
        memory_limit=settings.memory_limit, cpu_limit_s=settings.cpu_limit_s,
    )


def _package(emit: _Emitter, info: SourceInfo, rungs: list[Rung], loop: DecodeLoop,
             video_segments: dict[str, list[SegmentInfo]], timescale: int, audio: AudioTrack | None,
             audio_segments: list[SegmentInfo], settings: TranscodeSettings, planned_target: int) -> TranscodeResult:
    """Final VOD playlists, ``master.m3u8`` and ``manifest.mpd`` (static)."""
    # A segment may run past the plan (a VFR gap at its end): the VOD playlist states the truth.
    target = max([planned_target] + [_rounded(s, timescale) for n in video_segments for s in video_segments[n]]
                 + ([_rounded(s, audio.rate) for s in audio_segments] if audio is not None else []))
    for name, segments in video_segments.items():
        if not segments:
            raise EncoderFailedError(f"encoder {name} produced no segment")
        emit.text(f"{name}/{PLAYLIST}", media_playlist(segments, timescale, target, complete=True))
    audio_track = None
    audio_media = None
    if audio is not None:
        if not audio_segments:
            raise TranscodeError("audio track produced no segment")
        emit.text(f"{AUDIO_FOLDER}/{PLAYLIST}", media_playlist(audio_segments, audio.rate, target, complete=True))
        audio_track = _Track(audio_segments, audio.rate)
        audio_media = AudioMedia(uri=f"{AUDIO_FOLDER}/{PLAYLIST}", language=audio.language,
                                 channels=audio.channels)
    fps = info.fps
    variants, renditions, reps = [], [], []
    for rung in rungs:
        track = _Track(video_segments[rung.name], timescale)
        codecs = loop.finished[rung.name].codecs
        peak = track.peak_bps() + (audio_track.peak_bps() if audio_track else 0)
        average = track.average_bps() + (audio_track.average_bps() if audio_track else 0)
        all_codecs = f"{codecs},{audio.codecs}" if audio is not None else codecs
        variants.append(Variant(uri=f"{rung.name}/{PLAYLIST}", bandwidth=peak, average_bandwidth=average,
                                codecs=all_codecs, width=rung.width, height=rung.height, frame_rate=float(fps)))
        renditions.append(Rendition(name=rung.name, width=rung.width, height=rung.height, bandwidth=peak,
                                    average_bandwidth=average, codecs=all_codecs, frame_rate=round(float(fps), 3),
                                    segments=len(track.segments)))
        reps.append(VideoRepresentation(id=rung.name, bandwidth=track.peak_bps(), width=rung.width,
                                        height=rung.height, codecs=codecs))
    emit.text(MASTER, master_playlist(variants, audio_media))
    first = video_segments[rungs[0].name]
    duration_s = presentation_seconds(first, timescale)
    audio_rep = None
    audio_rendition = None
    if audio is not None and audio_track is not None:
        audio_rep = AudioRepresentation(id=AUDIO_FOLDER, bandwidth=audio_track.peak_bps(), codecs=audio.codecs,
                                        sample_rate=audio.rate, channels=audio.channels, language=audio.language)
        audio_rendition = Rendition(name=AUDIO_FOLDER, bandwidth=audio_track.peak_bps(),
                                    average_bandwidth=audio_track.average_bps(), codecs=audio.codecs,
                                    segments=len(audio_segments), kind="audio")
    emit.text(MANIFEST, build_mpd(
        duration_s=duration_s, segment_s=settings.segment_duration, fps=Fraction(fps), video=reps,
        video_timescale=timescale, video_segments=first, audio=audio_rep, audio_segments=audio_segments,
        start_s=loop.start_ticks / timescale))
    emit.file(POSTER)  # named by no playlist; the decode loop has written its last version
    return TranscodeResult(
        duration_s=round(duration_s, 3), renditions=renditions, audio=audio is not None,
        audio_rendition=audio_rendition, poster=POSTER, master=MASTER, manifest=MANIFEST, frames=loop.frames,
        source_width=info.width, source_height=info.height, source_fps=round(float(fps), 3),
    )


def _rounded(segment: SegmentInfo, timescale: int) -> int:
    return int(segment.duration / timescale + 0.5)


class _Emitter:
    """The pipeline's write points for playlists and the notices of finished files: each goes to
    disk, then (in the same order) to the publish hook when there is one."""

    def __init__(self, out_dir: Path, publish: Publish | None) -> None:
        self.out_dir = out_dir
        self.publish = publish
        self._inits: set[str] = set()

    def text(self, rel: str, text: str) -> None:
        data = text.encode()
        write_atomic(self.out_dir / rel, data)
        if self.publish is not None:
            self.publish(rel, data)

    def file(self, rel: str) -> None:
        if self.publish is not None and (self.out_dir / rel).exists():
            self.publish(rel, None)

    def segment(self, folder: str, segment: SegmentInfo) -> None:
        """A track's segment is on disk; its init was written before its first segment."""
        if folder not in self._inits:
            self._inits.add(folder)
            self.file(f"{folder}/{INIT_NAME}")
        self.file(f"{folder}/{SEGMENT_NAME.format(segment.number)}")
