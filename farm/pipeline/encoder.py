"""One encoder process per rendition: read frames from the ring, scale, encode with libx264,
cut CMAF segments at the forced keyframes.

Started as ``python -m streamgate.farm.pipeline.encoder IN_FD OUT_FD`` (a plain subprocess rather than a
multiprocessing child: it starts from any process and thread, daemonic or not, whatever the
caller's ``__main__`` is). It names itself ``streamgate encoder <rung>`` and dies with its
parent. :class:`EncoderHandle` is the parent's side.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import msgspec

from streamgate.farm.pipeline.encoder_protocol import (
    END_OF_STREAM,
    EVENT_DECODER,
    JOB_DECODER,
    NOTICE,
    NOTICE_KEY,
    Attached,
    EncoderEvent,
    EncoderJob,
    Failed,
    Finished,
    Released,
    SegmentWritten,
    frame_message,
    split_messages,
)
from streamgate.farm.pipeline.errors import EncoderFailedError, ResourceLimitError, TranscodeError
from streamgate.farm.pipeline.limits import EXIT_CPU_LIMIT


class _ParentGone(Exception):
    pass


def _read_exact(fd: int, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = os.read(fd, size - got)
        if not chunk:
            raise _ParentGone
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _send(fd: int, message: msgspec.Struct) -> None:
    data = frame_message(message)
    while data:
        written = os.write(fd, data)
        data = data[written:]


def encoder_options(job: EncoderJob) -> dict[str, str]:
    """libx264 options: CRF under a VBV cap, a closed GOP of one segment, no scene-cut IDRs,
    so IDRs fall exactly where the decoder forces them and align across rungs."""
    options = {
        "preset": job.preset,
        "crf": str(job.crf),
        "maxrate": str(job.maxrate),
        "bufsize": str(job.bufsize),
        "g": str(job.gop),
        "keyint_min": str(job.gop),
        "sc_threshold": "0",
        "forced-idr": "1",
    }
    if job.x264_params:
        options["x264-params"] = job.x264_params
    return options


def run(in_fd: int, out_fd: int) -> int:
    """Serve jobs one after another until the parent closes our input.

    A process that finished a job cleanly may be given another (a farm worker keeps its
    encoders warm across jobs, farm/pipeline/encoder_pool.py): the interpreter start and the
    PyAV/numpy imports (~0.3 s CPU each) are paid once per process, not once per rung per job.
    Any failure ends the process, so a reused encoder never carries a broken state over.
    """
    import av  # noqa: F401 - imported before the first job arrives: that is the warm-up

    first = True
    while True:
        try:
            size = int.from_bytes(_read_exact(in_fd, 4), "little")
            job = JOB_DECODER.decode(_read_exact(in_fd, size))
        except _ParentGone:  # cancelled before this process started, or the pool let us go
            return 1 if first else 0
        first = False
        if _run_job(job, in_fd, out_fd) != 0:
            return 1


def _run_job(job: EncoderJob, in_fd: int, out_fd: int) -> int:
    import av
    from av.video.reformatter import Interpolation, VideoReformatter

    from streamgate.common.process import die_with_parent, set_title
    from streamgate.farm.pipeline.cmaf import avc_sample, avcc, video_init
    from streamgate.farm.pipeline.limits import (
        memory_error_reason,
        near_memory_limit,
        set_memory_limit,
        start_cpu_budget,
    )
    from streamgate.farm.pipeline.packager import TrackSegmenter
    from streamgate.farm.pipeline.ring import RingView

    set_title(f"encoder {job.name}")
    set_memory_limit(job.memory_limit)
    start_cpu_budget(job.cpu_limit_s)
    die_with_parent(signal.SIGKILL, expected_parent=job.parent_pid or None)
    ring = RingView(job.ring_name, job.ring_width, job.ring_height, job.ring_slots)
    try:
        codec = av.CodecContext.create("libx264", "w")
        codec.width, codec.height, codec.pix_fmt = job.width, job.height, "yuv420p"
        codec.time_base = Fraction(1, job.timescale)
        codec.framerate = Fraction(job.fps_num, job.fps_den)
        codec.thread_type = "AUTO"  # PyAV's default (SLICE) made the ladder ~1.6x slower (issue 3)
        codec.thread_count = job.threads
        codec.flags |= av.codec.context.Flags.global_header  # SPS/PPS in extradata for avcC
        codec.options = encoder_options(job)
        codec.open()
        avcc_payload, codecs = avcc(bytes(codec.extradata or b""))
        _send(out_fd, Attached(codecs))
        segmenter = TrackSegmenter(Path(job.folder), job.timescale, with_cto=True)
        segmenter.write_init(video_init(job.width, job.height, job.timescale, avcc_payload))
        scale = (job.width, job.height) != (job.ring_width, job.ring_height)
        reformatter = VideoReformatter()
        interpolation = Interpolation[job.interpolation]
        boundaries: set[int] = set()
        frames = 0
        started = None
        last_duration = 1

        def mux(packets: list[av.Packet]) -> None:
            for packet in packets:
                if packet.pts is None:
                    raise RuntimeError("x264 returned a packet without a timestamp")
                pts = packet.pts
                # The decoder starts presentation at a delay that covers x264's B-frame reorder
                # delay, so decode times are >= 0 and composition offsets positive (no edit list).
                dts = max(0, packet.dts if packet.dts is not None else pts)
                sample = avc_sample(bytes(packet))
                if pts in boundaries:
                    if not packet.is_keyframe:
                        raise RuntimeError(f"no IDR at the forced segment boundary pts={pts}")
                    boundaries.discard(pts)
                    info = segmenter.boundary(sample, dts, pts, True)
                    if info is not None:
                        _send(out_fd, SegmentWritten(info, codecs))
                else:
                    segmenter.add(sample, dts, pts, packet.is_keyframe)

        while True:
            slot, pts, duration, flags = NOTICE.unpack(_read_exact(in_fd, NOTICE.size))
            if slot == END_OF_STREAM:
                last_duration = max(duration, 1)
                break
            if started is None:
                started = time.monotonic()
            source = ring.slot(slot)
            # Both ways read the slot in place: swscale writes a new frame, and x264 copies its
            # input picture into its own frame pool inside x264_encoder_encode. So the slot is
            # free once the scaled frame exists, or once the unscaled one has been submitted.
            frame = av.VideoFrame.from_numpy_buffer(source, format="yuv420p")
            if scale:
                frame = reformatter.reformat(frame, job.width, job.height, "yuv420p",
                                             interpolation=interpolation)
                _send(out_fd, Released(slot))
            del source
            frame.pts = pts
            frame.time_base = codec.time_base
            if flags & NOTICE_KEY:
                frame.pict_type = av.video.frame.PictureType.I
                boundaries.add(pts)
            last_duration = max(duration, 1)
            packets = codec.encode(frame)
            del frame
            if not scale:
                _send(out_fd, Released(slot))
            mux(packets)
            frames += 1
        mux(codec.encode(None))  # flush every frame x264 still holds
        info = segmenter.finish(last_duration)
        if info is not None:
            _send(out_fd, SegmentWritten(info, codecs))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        _send(out_fd, Finished(frames=frames, codecs=codecs,
                               encode_s=time.monotonic() - (started or time.monotonic()),
                               cpu_s=usage.ru_utime + usage.ru_stime))
        return 0
    except _ParentGone:
        return 1
    except Exception as exc:  # reported to the parent as the job's reason
        # RLIMIT_AS: av.error.MemoryError is a MemoryError; x264 says "generic error".
        limit = isinstance(exc, MemoryError) or near_memory_limit(job.memory_limit)
        reason = memory_error_reason(exc, job.memory_limit) if limit else f"{type(exc).__name__}: {exc}"
        try:
            _send(out_fd, Failed(f"encoder {job.name}: {reason}", resource_limit=limit))
        except OSError:
            pass
        return 1
    finally:
        ring.close()


class EncoderHandle:
    """The parent's side of one encoder process."""

    def __init__(self, job: EncoderJob | None = None) -> None:
        """Start the process; with no ``job`` it imports PyAV and numpy and waits for
        :meth:`assign` (so its start-up overlaps the parent's probing)."""
        self.job: EncoderJob | None = None
        self.name = "(unassigned)"
        self._to_child_r, self._to_child_w = os.pipe()
        self._from_child_r, self._from_child_w = os.pipe()
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamgate.farm.pipeline.encoder", str(self._to_child_r), str(self._from_child_w)],
            pass_fds=(self._to_child_r, self._from_child_w), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=self._stderr, close_fds=True,
        )
        os.close(self._to_child_r)
        os.close(self._from_child_w)
        os.set_blocking(self._from_child_r, False)
        self.fd = self._from_child_r
        self._buffer = bytearray()
        self.eof = False
        self.closed_input = False
        self.jobs = 0  # jobs assigned to this process so far (a warm encoder serves several)
        if job is not None:
            self.assign(job)

    def assign(self, job: EncoderJob) -> None:
        self.job = job
        self.name = job.name
        self.jobs += 1
        self.write(frame_message(job))

    def reusable(self) -> bool:
        """Alive, its pipes open, and nothing of the last job left unread: it may take another."""
        return (self.proc.poll() is None and not self.eof and not self.closed_input
                and not self._buffer and self._to_child_w >= 0)

    def recycle(self) -> None:
        """Forget the finished job (the process waits for the next :meth:`assign`)."""
        self.job = None
        self.name = "(unassigned)"
        try:
            self._stderr.seek(0)
            self._stderr.truncate()
        except (OSError, ValueError):
            pass

    def write(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self._to_child_w, data):]
        except BrokenPipeError:
            self.closed_input = True

    def notice(self, slot: int, pts: int, duration: int, flags: int) -> None:
        if not self.closed_input:
            self.write(NOTICE.pack(slot, pts, duration, flags))

    def end(self, last_duration: int) -> None:
        self.notice(END_OF_STREAM, 0, last_duration, 0)

    def read_events(self) -> list[EncoderEvent]:
        """Every complete event the child has sent so far (non-blocking)."""
        while not self.eof:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self.eof = True
                break
            self._buffer += chunk
        return [EVENT_DECODER.decode(m) for m in split_messages(self._buffer)]

    def stderr_tail(self, limit: int = 400) -> str:
        try:
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""
        return text[-limit:]

    def death_error(self) -> TranscodeError:
        """Why the process ended without finishing, as the job's failure."""
        if self.proc.poll() == EXIT_CPU_LIMIT:
            limit = f" of {self.job.cpu_limit_s:g} s" if self.job is not None else ""
            return ResourceLimitError(f"encoder {self.name} reached its CPU time limit{limit} per job")
        return EncoderFailedError(self.death_reason())

    def death_reason(self) -> str:
        code = self.proc.poll()
        if code is None:
            return f"encoder {self.name} stopped answering"
        if code < 0:
            try:
                signame = signal.Signals(-code).name
            except ValueError:
                signame = str(-code)
            return f"encoder {self.name} was killed by {signame}"
        tail = self.stderr_tail()
        return f"encoder {self.name} exited with status {code}" + (f": {tail}" if tail else "")

    def stop(self, timeout: float = 2.0) -> None:
        """Close the pipes, then make sure the process is gone (SIGKILL after ``timeout``)."""
        for fd in (self._to_child_w, self._from_child_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._to_child_w = self._from_child_r = -1
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


if __name__ == "__main__":
    sys.exit(run(int(sys.argv[1]), int(sys.argv[2])))
