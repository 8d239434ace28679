"""What the decoder and an encoder process say to each other over their two pipes.

Parent -> encoder: one length-prefixed msgpack :class:`EncoderJob`, then fixed-size frame
notices (:data:`NOTICE`: slot, pts, duration, flags); slot -1 ends the stream.
Encoder -> parent: length-prefixed msgpack :data:`EncoderEvent` messages (a tagged union).
"""

from __future__ import annotations

import struct

import msgspec

from streamgate.farm.pipeline.packager import SegmentInfo

NOTICE = struct.Struct("<iqqB")  # slot, pts, duration (track timescale), flags
NOTICE_KEY = 0x1  # force an IDR: a segment starts at this frame
END_OF_STREAM = -1
_LENGTH = struct.Struct("<I")


class EncoderJob(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # the rung, e.g. "720p": folder name and process title
    folder: str
    ring_name: str
    ring_width: int
    ring_height: int
    ring_slots: int
    width: int
    height: int
    timescale: int
    fps_num: int
    fps_den: int
    gop: int
    preset: str
    crf: int
    maxrate: int
    bufsize: int
    threads: int  # x264 threads; 0 = x264's own choice
    x264_params: str = ""
    interpolation: str = "BICUBIC"
    parent_pid: int = 0
    memory_limit: int = 0  # RLIMIT_AS bytes of the encoder process; 0: none
    cpu_limit_s: float = 0.0  # RLIMIT_CPU seconds of the encoder process (it lives one job); 0: none


class Attached(msgspec.Struct, tag=True):
    """The ring is mapped: the parent may unlink its name. Sent once x264 is open, with the
    rung's RFC 6381 codecs, so a master playlist can name every rung before each has a segment."""

    codecs: str = ""


class Released(msgspec.Struct, tag=True):
    slot: int


class SegmentWritten(msgspec.Struct, tag=True):
    segment: SegmentInfo
    codecs: str = ""  # RFC 6381, so a live master playlist can be published before the end


class Finished(msgspec.Struct, tag=True, kw_only=True):
    frames: int
    codecs: str
    encode_s: float  # wall seconds from the first frame to the last segment
    cpu_s: float  # user + system seconds of the whole encoder process


class Failed(msgspec.Struct, tag=True):
    reason: str
    resource_limit: bool = False  # a memory limit was reached: final, not an encoder crash


EncoderEvent = Attached | Released | SegmentWritten | Finished | Failed

_encoder = msgspec.msgpack.Encoder()
JOB_DECODER = msgspec.msgpack.Decoder(EncoderJob)
EVENT_DECODER = msgspec.msgpack.Decoder(EncoderEvent)


def frame_message(message: msgspec.Struct) -> bytes:
    body = _encoder.encode(message)
    return _LENGTH.pack(len(body)) + body


def split_messages(buffer: bytearray) -> list[bytes]:
    """Take every complete length-prefixed message off the front of ``buffer``."""
    out = []
    while len(buffer) >= 4:
        (size,) = _LENGTH.unpack_from(buffer)
        if len(buffer) < 4 + size:
            break
        out.append(bytes(buffer[4:4 + size]))
        del buffer[:4 + size]
    return out
