"""CMAF (ISO/IEC 23000-19) boxes: init segments, media segments, and the reading the gate needs.

One track per file, ``cmfc`` brand, fragments of ``moof`` + ``mdat`` with ``tfdt`` and a version 1
``trun`` (signed composition offsets, so B-frames need no edit list: ISO/IEC 14496-12 8.8.8).
Written by hand rather than through libavformat's mov muxer so that segment boundaries are
exactly the ones the pipeline chose, for video and audio alike.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import msgspec

SAMPLE_SYNC = 0x02000000  # sample_depends_on = 2 (an I frame)
SAMPLE_NON_SYNC = 0x01010000  # sample_depends_on = 1, sample_is_non_sync_sample = 1
_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
_TFHD_DEFAULT_BASE_IS_MOOF = 0x020000


class Sample(msgspec.Struct, array_like=True):
    size: int
    duration: int
    sync: bool
    cto: int = 0  # composition time offset: pts - dts


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def _language(code: str) -> int:
    code = (code if len(code) == 3 and code.isalpha() else "und").lower()
    return ((ord(code[0]) - 0x60) << 10) | ((ord(code[1]) - 0x60) << 5) | (ord(code[2]) - 0x60)


# --- H.264 -------------------------------------------------------------------------------------

def annexb_nals(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream (start codes 00 00 01 / 00 00 00 01)."""
    nals, i, n = [], 0, len(data)
    starts = []
    while True:
        j = data.find(b"\x00\x00\x01", i)
        if j < 0:
            break
        starts.append(j + 3)
        i = j + 3
    for k, start in enumerate(starts):
        end = starts[k + 1] - 3 if k + 1 < len(starts) else n
        nal = data[start:end]
        # A 4-byte start code leaves its leading zero at the end of the previous NAL.
        while nal.endswith(b"\x00") and k + 1 < len(starts):
            nal = nal[:-1]
        if nal:
            nals.append(nal)
    return nals


def avc_sample(packet: bytes) -> bytes:
    """An Annex B access unit as an MP4 sample: 4-byte lengths, parameter sets and AUDs dropped
    (they live in ``avcC``: ISO/IEC 14496-15 5.3.3)."""
    out = bytearray()
    for nal in annexb_nals(packet):
        if nal[0] & 0x1F in (7, 8, 9):
            continue
        out += struct.pack(">I", len(nal)) + nal
    return bytes(out)


def avcc(extradata: bytes) -> tuple[bytes, str]:
    """``avcC`` payload and the RFC 6381 codecs string from Annex B SPS/PPS."""
    nals = annexb_nals(extradata)
    sps = [n for n in nals if n[0] & 0x1F == 7]
    pps = [n for n in nals if n[0] & 0x1F == 8]
    if not sps or not pps:
        raise ValueError("encoder extradata holds no SPS/PPS")
    profile, compat, level = sps[0][1], sps[0][2], sps[0][3]
    body = bytearray([1, profile, compat, level, 0xFF, 0xE0 | len(sps)])
    for n in sps:
        body += struct.pack(">H", len(n)) + n
    body.append(len(pps))
    for n in pps:
        body += struct.pack(">H", len(n)) + n
    if profile in (100, 110, 122, 144):
        # High profiles carry chroma format and bit depth; the pipeline always encodes 8-bit 4:2:0.
        body += bytes([0xFC | 1, 0xF8 | 0, 0xF8 | 0, 0])
    return bytes(body), f"avc1.{profile:02x}{compat:02x}{level:02x}"


# --- init segments -------------------------------------------------------------------------------

def _ftyp() -> bytes:
    return box(b"ftyp", b"cmfc", struct.pack(">I", 0), b"cmfc", b"iso6", b"mp41", b"dash")


def _moov(timescale: int, handler: bytes, media_header: bytes, sample_entry: bytes,
          width: int = 0, height: int = 0, language: str = "und") -> bytes:
    audio = handler == b"soun"
    mvhd = full_box(b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, 1000, 0), struct.pack(">IH", 0x10000, 0x100),
                    bytes(10), _MATRIX, bytes(24), struct.pack(">I", 2))
    tkhd = full_box(b"tkhd", 0, 3, struct.pack(">IIIII", 0, 0, 1, 0, 0), bytes(8),
                    struct.pack(">hhhH", 0, 0, 0x100 if audio else 0, 0), _MATRIX,
                    struct.pack(">II", width << 16, height << 16))
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, timescale, 0),
                    struct.pack(">HH", _language(language), 0))
    name = b"SoundHandler\x00" if audio else b"VideoHandler\x00"
    hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I", 0), handler, bytes(12), name)
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    stbl = box(
        b"stbl",
        full_box(b"stsd", 0, 0, struct.pack(">I", 1), sample_entry),
        full_box(b"stts", 0, 0, struct.pack(">I", 0)),
        full_box(b"stsc", 0, 0, struct.pack(">I", 0)),
        full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
        full_box(b"stco", 0, 0, struct.pack(">I", 0)),
    )
    minf = box(b"minf", media_header, dinf, stbl)
    trak = box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, minf))
    mvex = box(b"mvex", full_box(b"trex", 0, 0, struct.pack(">IIIII", 1, 1, 0, 0, 0)))
    return box(b"moov", mvhd, trak, mvex)


def video_init(width: int, height: int, timescale: int, avcc_payload: bytes) -> bytes:
    entry = box(
        b"avc1", bytes(6), struct.pack(">H", 1), bytes(16), struct.pack(">HH", width, height),
        struct.pack(">II", 0x480000, 0x480000), bytes(4), struct.pack(">H", 1), bytes(32),
        struct.pack(">Hh", 0x18, -1), box(b"avcC", avcc_payload), box(b"pasp", struct.pack(">II", 1, 1)),
    )
    vmhd = full_box(b"vmhd", 0, 1, bytes(8))
    return _ftyp() + _moov(timescale, b"vide", vmhd, entry, width, height)


def _descriptor(tag: int, body: bytes) -> bytes:
    return bytes([tag, len(body)]) + body


def audio_init(sample_rate: int, channels: int, asc: bytes, bitrate: int, language: str = "und") -> bytes:
    decoder_config = _descriptor(
        0x04, bytes([0x40, 0x15]) + struct.pack(">I", 0)[1:] + struct.pack(">II", bitrate, bitrate)
        + _descriptor(0x05, asc))
    es = _descriptor(0x03, struct.pack(">HB", 1, 0) + decoder_config + _descriptor(0x06, b"\x02"))
    entry = box(
        b"mp4a", bytes(6), struct.pack(">H", 1), bytes(8), struct.pack(">HHHH", channels, 16, 0, 0),
        struct.pack(">I", (sample_rate << 16) if sample_rate < 65536 else 0), full_box(b"esds", 0, 0, es),
    )
    smhd = full_box(b"smhd", 0, 0, bytes(4))
    return _ftyp() + _moov(sample_rate, b"soun", smhd, entry, language=language)


def aac_codecs(asc: bytes) -> str:
    object_type = asc[0] >> 3 if asc else 2
    return f"mp4a.40.{object_type}"


# --- media segments ------------------------------------------------------------------------------

def media_segment(sequence: int, base_decode_time: int, samples: list[Sample], data: bytes,
                  *, with_cto: bool) -> bytes:
    """``styp`` + ``moof`` + ``mdat`` for one fragment holding all ``samples``."""
    trun_flags = 0x000701 | (0x000800 if with_cto else 0)  # data offset, duration, size, flags, [cto]
    per_sample = ">IIIi" if with_cto else ">III"
    entries = b"".join(
        struct.pack(per_sample, s.duration, s.size, SAMPLE_SYNC if s.sync else SAMPLE_NON_SYNC,
                    *((s.cto,) if with_cto else ()))
        for s in samples)

    def moof(data_offset: int) -> bytes:
        return box(
            b"moof",
            full_box(b"mfhd", 0, 0, struct.pack(">I", sequence)),
            box(b"traf",
                full_box(b"tfhd", 0, _TFHD_DEFAULT_BASE_IS_MOOF, struct.pack(">I", 1)),
                full_box(b"tfdt", 1, 0, struct.pack(">Q", base_decode_time)),
                full_box(b"trun", 1, trun_flags, struct.pack(">Ii", len(samples), data_offset), entries)),
        )

    size = len(moof(0))
    styp = box(b"styp", b"msdh", struct.pack(">I", 0), b"msdh", b"msix", b"cmfs")
    return styp + moof(size + 8) + box(b"mdat", data)


# --- reading (the conformance gate) --------------------------------------------------------------

def iter_boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes in ``data[start:end]``.

    ``end`` may lie beyond ``data`` when ``data`` is the head of a file ``end`` bytes long: the
    boxes whose headers are in the head are still listed (the gate reads no ``mdat`` payload).
    """
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= min(end, len(data)):
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"box {kind!r} at {pos} overruns its parent")
        yield kind, pos + header, pos + size
        pos += size


class FragmentInfo(msgspec.Struct):
    base_decode_time: int
    samples: int
    duration: int  # sum of sample durations
    first_sync: bool
    earliest_presentation: int
    mdat_bytes: int
    sample_bytes: int  # sum of the trun sample sizes: must equal mdat_bytes


def read_fragment(data: bytes, file_size: int | None = None) -> FragmentInfo:
    """Parse one media segment's first ``moof``/``traf``/``trun`` (what the gate needs).

    ``data`` may be the head of a ``file_size``-byte file, as long as it holds the ``moof``.
    """
    boxes = {kind: (start, end) for kind, start, end in iter_boxes(data, 0, file_size)}
    if b"moof" not in boxes or b"mdat" not in boxes:
        raise ValueError("segment has no moof/mdat")
    mstart, mend = boxes[b"moof"]
    traf = next(((s, e) for k, s, e in iter_boxes(data, mstart, mend) if k == b"traf"), None)
    if traf is None:
        raise ValueError("moof has no traf")
    tfdt = trun = None
    for kind, s, e in iter_boxes(data, *traf):
        if kind == b"tfdt":
            version = data[s]
            tfdt = struct.unpack_from(">Q" if version == 1 else ">I", data, s + 4)[0]
        elif kind == b"trun":
            trun = (s, e)
    if tfdt is None or trun is None:
        raise ValueError("traf lacks tfdt or trun")
    s, _ = trun
    version, flags = data[s], int.from_bytes(data[s + 1:s + 4], "big")
    count = struct.unpack_from(">I", data, s + 4)[0]
    pos = s + 8 + (4 if flags & 0x1 else 0)
    first_flags = None
    if flags & 0x4:
        first_flags = struct.unpack_from(">I", data, pos)[0]
        pos += 4
    total = sizes = 0
    earliest = None
    dts = tfdt
    for index in range(count):
        duration = cto = 0
        if flags & 0x100:
            duration = struct.unpack_from(">I", data, pos)[0]
            pos += 4
        if flags & 0x200:
            sizes += struct.unpack_from(">I", data, pos)[0]
            pos += 4
        if flags & 0x400:
            sample_flags = struct.unpack_from(">I", data, pos)[0]
            if index == 0 and first_flags is None:
                first_flags = sample_flags
            pos += 4
        if flags & 0x800:
            cto = struct.unpack_from(">i" if version == 1 else ">I", data, pos)[0]
            pos += 4
        pts = dts + cto
        earliest = pts if earliest is None else min(earliest, pts)
        total += duration
        dts += duration
    first_sync = first_flags is not None and not (first_flags >> 16) & 0x1 and (first_flags >> 24) & 0x3 != 1
    ds, de = boxes[b"mdat"]
    return FragmentInfo(base_decode_time=tfdt, samples=count, duration=total, first_sync=first_sync,
                        earliest_presentation=earliest if earliest is not None else tfdt,
                        mdat_bytes=de - ds, sample_bytes=sizes)
