"""The conformance gate: a ladder is done only when its files keep these rules.

HLS (RFC 8216): version >= 6 with EXT-X-MAP (7), EXT-X-INDEPENDENT-SEGMENTS, the STREAM-INF
attributes (BANDWIDTH no lower than the measured peak segment bit rate, 4.3.4.2), every EXTINF
rounded no longer than EXT-X-TARGETDURATION (4.3.3.1), VOD with ENDLIST, relative URIs.
CMAF: every segment present, non-empty, a ``moof`` with samples, video segments starting on a
sync sample at the same time in every rung. Audio and video durations within one frame.
DASH: the MPD valid against ``DASH-MPD.xsd`` (lxml, no network) and the DASH-IF IOP basics:
segmentAlignment on video, ``@lang`` on audio, par/sar/frameRate on video, one timescale per
AdaptationSet. :func:`check_ladder` raises :class:`GateError` naming the first rule broken.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import struct
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import msgspec

from streamgate.common import layout
from streamgate.farm.pipeline.cmaf import iter_boxes, read_fragment
from streamgate.farm.pipeline.errors import GateError

if TYPE_CHECKING:  # annotations only: the functions import lxml where they check an MPD
    from lxml import etree

log = logging.getLogger(__name__)

MIN_HLS_VERSION = 6
_SEGMENT_HEAD = 256 * 1024  # a moof of ~16 000 samples
_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')
_MPD_NS = "{urn:mpeg:dash:schema:mpd:2011}"
_STREAM_INF_REQUIRED = ("BANDWIDTH", "AVERAGE-BANDWIDTH", "CODECS", "RESOLUTION", "FRAME-RATE")


class GateReport(msgspec.Struct, kw_only=True):
    rules: list[str] = msgspec.field(default_factory=list)  # rules checked
    warnings: list[str] = msgspec.field(default_factory=list)


class MediaPlaylist(msgspec.Struct, kw_only=True):
    version: int = 0
    target: int | None = None
    map_uri: str | None = None
    playlist_type: str | None = None
    endlist: bool = False
    independent: bool = False
    segments: list[tuple[float, str]] = msgspec.field(default_factory=list)


def _attributes(text: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in _ATTR.findall(text)}


def _fail(rule: str, detail: str) -> NoReturn:
    raise GateError(rule, detail)


def _relative(uri: str, where: str) -> None:
    if not uri or "://" in uri or uri.startswith("/") or ".." in uri.split("/"):
        _fail("uri.relative", f"{where}: URI {uri!r} is not a relative path inside the ladder")


def parse_media_playlist(text: str, where: str) -> MediaPlaylist:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != "#EXTM3U":
        _fail("hls.extm3u", f"{where} does not start with #EXTM3U")
    playlist = MediaPlaylist()
    duration: float | None = None
    for line in lines[1:]:
        if line.startswith("#EXT-X-VERSION:"):
            playlist.version = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-TARGETDURATION:"):
            playlist.target = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-MAP:"):
            playlist.map_uri = _attributes(line.split(":", 1)[1]).get("URI")
        elif line.startswith("#EXT-X-PLAYLIST-TYPE:"):
            playlist.playlist_type = line.split(":", 1)[1]
        elif line == "#EXT-X-ENDLIST":
            playlist.endlist = True
        elif line == "#EXT-X-INDEPENDENT-SEGMENTS":
            playlist.independent = True
        elif line.startswith("#EXTINF:"):
            duration = float(line.split(":", 1)[1].split(",", 1)[0])
        elif not line.startswith("#"):
            if duration is None:
                _fail("hls.extinf", f"{where}: segment {line} has no EXTINF")
            playlist.segments.append((duration, line))
            duration = None
    return playlist


def _timescale(init: bytes) -> tuple[int, bytes]:
    """(mdhd timescale, handler type) of a CMAF init segment."""
    boxes = {k: (s, e) for k, s, e in iter_boxes(init)}
    if b"ftyp" not in boxes or b"moov" not in boxes:
        raise ValueError("no ftyp/moov")
    s, e = boxes[b"ftyp"]
    brands = {init[i:i + 4] for i in range(s, e, 4)}
    if b"cmfc" not in brands:
        raise ValueError("ftyp lacks the cmfc brand")
    path = [b"trak", b"mdia"]
    start, end = boxes[b"moov"]
    for kind in path:
        start, end = next((s, e) for k, s, e in iter_boxes(init, start, end) if k == kind)
    timescale, handler = 0, b""
    for kind, s, _e in iter_boxes(init, start, end):
        if kind == b"mdhd":
            version = init[s]
            timescale = struct.unpack_from(">I", init, s + (20 if version == 1 else 12))[0]
        elif kind == b"hdlr":
            handler = init[s + 8:s + 12]
    if not timescale:
        raise ValueError("no mdhd timescale")
    return timescale, handler


class _Checked(msgspec.Struct):
    playlist: MediaPlaylist
    timescale: int
    handler: bytes
    starts: list[float]  # earliest presentation time of every segment, seconds
    peak_bps: float
    duration_s: float


def _check_media(folder: Path, uri: str, report: GateReport) -> _Checked:
    path = folder / uri
    where = uri
    if not path.is_file():
        _fail("hls.missing-playlist", f"{where} does not exist")
    playlist = parse_media_playlist(path.read_text(), where)
    if playlist.version < MIN_HLS_VERSION:
        _fail("hls.version", f"{where}: EXT-X-VERSION {playlist.version} < {MIN_HLS_VERSION} (needed for EXT-X-MAP)")
    if playlist.map_uri is None:
        _fail("hls.ext-x-map", f"{where}: no EXT-X-MAP (fMP4 segments need their init section)")
    if playlist.target is None:
        _fail("hls.target-duration", f"{where}: no EXT-X-TARGETDURATION")
    if playlist.playlist_type != "VOD" or not playlist.endlist:
        _fail("hls.vod", f"{where}: a finished ladder is PLAYLIST-TYPE:VOD with EXT-X-ENDLIST")
    if not playlist.segments:
        _fail("hls.no-segments", f"{where} lists no segment")
    base = path.parent
    _relative(playlist.map_uri or "", where)
    init_path = base / (playlist.map_uri or "")
    if not init_path.is_file() or init_path.stat().st_size == 0:
        _fail("cmaf.missing-init", f"{where}: init section {playlist.map_uri} is missing or empty")
    try:
        timescale, handler = _timescale(init_path.read_bytes())
    except (ValueError, StopIteration, struct.error) as exc:
        _fail("cmaf.init", f"{where}: {playlist.map_uri}: {exc}")
    starts, peak, total = [], 0.0, 0.0
    for extinf, seg_uri in playlist.segments:
        _relative(seg_uri, where)
        if int(extinf + 0.5) > (playlist.target or 0):
            _fail("hls.extinf-over-target",
                  f"{where}: {seg_uri} EXTINF {extinf:.3f} rounds above EXT-X-TARGETDURATION {playlist.target}")
        seg_path = base / seg_uri
        if not seg_path.is_file():
            _fail("media.missing-segment", f"{where}: {seg_uri} does not exist")
        with open(seg_path, "rb") as segment_file:
            size = os.fstat(segment_file.fileno()).st_size
            head = segment_file.read(_SEGMENT_HEAD)  # the moof: no need to read the media data
        if not size:
            _fail("media.empty-segment", f"{where}: {seg_uri} is empty")
        try:
            fragment = read_fragment(head, size)
        except (ValueError, struct.error) as exc:
            _fail("cmaf.segment", f"{where}: {seg_uri}: {exc}")
        if fragment.samples == 0 or fragment.mdat_bytes == 0:
            _fail("media.empty-segment", f"{where}: {seg_uri} holds no samples")
        if fragment.sample_bytes != fragment.mdat_bytes:
            _fail("cmaf.segment", f"{where}: {seg_uri}: samples add up to {fragment.sample_bytes} bytes, "
                  f"mdat holds {fragment.mdat_bytes} (truncated?)")
        if handler == b"vide" and not fragment.first_sync:
            _fail("media.segment-starts-with-keyframe", f"{where}: {seg_uri} does not start with a sync sample")
        measured = fragment.duration / timescale
        if abs(measured - extinf) > max(0.1, extinf * 0.05):
            _fail("hls.extinf-mismatch", f"{where}: {seg_uri} EXTINF {extinf:.3f} but its samples last {measured:.3f} s")
        starts.append(fragment.earliest_presentation / timescale)
        if extinf > 0:
            peak = max(peak, size * 8 / extinf)
        total += extinf
    report.rules.append(f"media:{uri}")
    return _Checked(playlist=playlist, timescale=timescale, handler=handler, starts=starts, peak_bps=peak,
                    duration_s=total)


def check_ladder(out_dir: Path, *, schema: str | Path | None = None) -> GateReport:
    """Check the ladder in ``out_dir``; raise :class:`GateError` on the first broken rule."""
    out_dir = Path(out_dir)
    report = GateReport()
    master_path = out_dir / layout.MASTER
    if not master_path.is_file():
        _fail("hls.missing-master", "master.m3u8 does not exist")
    lines = [line.strip() for line in master_path.read_text().splitlines() if line.strip()]
    if not lines or lines[0] != "#EXTM3U":
        _fail("hls.extm3u", "master.m3u8 does not start with #EXTM3U")
    version = next((int(line.split(":", 1)[1]) for line in lines if line.startswith("#EXT-X-VERSION:")), 0)
    if version < MIN_HLS_VERSION:
        _fail("hls.version", f"master.m3u8: EXT-X-VERSION {version} < {MIN_HLS_VERSION}")
    if "#EXT-X-INDEPENDENT-SEGMENTS" not in lines:
        _fail("hls.independent-segments", "master.m3u8 lacks EXT-X-INDEPENDENT-SEGMENTS")
    media_groups: dict[str, str] = {}
    for line in lines:
        if line.startswith("#EXT-X-MEDIA:"):
            attrs = _attributes(line.split(":", 1)[1])
            if attrs.get("TYPE") == "AUDIO":
                if "URI" not in attrs:
                    _fail("hls.audio-group", "EXT-X-MEDIA TYPE=AUDIO without URI")
                _relative(attrs["URI"], layout.MASTER)
                media_groups[attrs.get("GROUP-ID", "")] = attrs["URI"]
    variants: list[tuple[dict[str, str], str]] = []
    for index, line in enumerate(lines):
        if line.startswith("#EXT-X-STREAM-INF:"):
            if index + 1 >= len(lines) or lines[index + 1].startswith("#"):
                _fail("hls.stream-inf-uri", "EXT-X-STREAM-INF is not followed by a URI")
            variants.append((_attributes(line.split(":", 1)[1]), lines[index + 1]))
    if not variants:
        _fail("hls.no-variants", "master.m3u8 lists no variant stream")
    audio: _Checked | None = None
    for group, uri in media_groups.items():
        audio = _check_media(out_dir, uri, report)
        if audio.handler != b"soun":
            _fail("hls.audio-group", f"audio group {group!r} points at a {audio.handler!r} track")
    videos: list[tuple[str, _Checked]] = []
    for attrs, uri in variants:
        missing = [name for name in _STREAM_INF_REQUIRED if name not in attrs]
        if missing:
            _fail("hls.stream-inf-attributes", f"{uri}: EXT-X-STREAM-INF lacks {', '.join(missing)}")
        if "AUDIO" in attrs and attrs["AUDIO"] not in media_groups:
            _fail("hls.audio-group", f"{uri}: AUDIO={attrs['AUDIO']!r} names no EXT-X-MEDIA group")
        if media_groups and "AUDIO" not in attrs:
            _fail("hls.audio-group", f"{uri}: variant does not reference the audio group")
        _relative(uri, layout.MASTER)
        checked = _check_media(out_dir, uri, report)
        peak = checked.peak_bps + (audio.peak_bps if audio else 0)
        if int(attrs["BANDWIDTH"]) < peak * 0.99:
            _fail("hls.bandwidth", f"{uri}: BANDWIDTH {attrs['BANDWIDTH']} is below the measured peak {peak:.0f}")
        videos.append((uri, checked))
    first_uri, first = videos[0]
    for uri, checked in videos[1:]:
        if len(checked.starts) != len(first.starts) or any(
                abs(a - b) > 0.001 for a, b in zip(checked.starts, first.starts, strict=False)):
            _fail("video.keyframes-misaligned",
                  f"{uri} segments do not start at the same times as {first_uri}'s")
    report.rules.append("video.keyframes-aligned")
    if audio is not None:
        fps = float(variants[0][0].get("FRAME-RATE", "30") or 30)
        tolerance = max(1 / fps, 1024 / audio.timescale) + 0.002
        if abs(audio.duration_s - first.duration_s) > tolerance:
            _fail("av.duration-mismatch",
                  f"audio lasts {audio.duration_s:.3f} s, video {first.duration_s:.3f} s (more than one frame apart)")
        report.rules.append("av.durations")
        # Audio ahead of (or behind) the video: the first media times must agree too.
        if abs(audio.starts[0] - first.starts[0]) > tolerance:
            _fail("av.start-mismatch",
                  f"audio starts at {audio.starts[0]:.3f} s, video at {first.starts[0]:.3f} s (more than one frame apart)")
        report.rules.append("av.starts")
    _check_mpd(out_dir, schema, report, {uri.split("/")[0]: c for uri, c in videos}, audio)
    poster = out_dir / layout.POSTER
    if not poster.is_file() or not poster.read_bytes()[:2] == b"\xff\xd8":
        _fail("poster", "poster.jpg is missing or not a JPEG")
    return report


@functools.lru_cache(maxsize=4)
def _schema(path: str) -> etree.XMLSchema:
    from lxml import etree

    parser = etree.XMLParser(no_network=True)
    return etree.XMLSchema(etree.parse(path, parser))


def default_schema() -> Path:
    """The DASH-MPD.xsd shipped as package data (``schemas/``, beside its ``xlink.xsd``).

    Package data of a regular (unzipped) install is a real file, which lxml needs to resolve the
    schema's relative ``xlink.xsd`` import."""
    path = Path(str(resources.files("streamgate.farm.pipeline").joinpath("schemas", "DASH-MPD.xsd")))
    if not path.is_file():  # a broken install: never validate silently without the schema
        raise FileNotFoundError(f"the DASH MPD schema is missing from the package: {path}")
    return path


def _check_mpd(out_dir: Path, schema: str | Path | None, report: GateReport,
               videos: dict[str, _Checked], audio: _Checked | None) -> None:
    from lxml import etree

    path = out_dir / layout.MANIFEST
    if not path.is_file():
        _fail("dash.missing-mpd", "manifest.mpd does not exist")
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    try:
        doc = etree.parse(str(path), parser)
    except etree.XMLSyntaxError as exc:
        _fail("dash.xml", f"manifest.mpd is not well-formed XML: {exc}")
    xsd = _schema(str(Path(schema) if schema else default_schema()))
    if not xsd.validate(doc):
        error = xsd.error_log.last_error  # type: ignore[attr-defined]  # lxml-stubs leave _ErrorLog empty
        _fail("dash.schema", f"manifest.mpd fails DASH-MPD.xsd: line {error.line}: {error.message}")
    report.rules.append("dash.schema")
    root = doc.getroot()
    if root.get("type", "static") != "static":
        _fail("dash.type", "a finished ladder has a static MPD")
    for base in root.iter(f"{_MPD_NS}BaseURL"):
        _relative((base.text or "").strip(), "manifest.mpd BaseURL")
    sets = list(root.iter(f"{_MPD_NS}AdaptationSet"))
    for aset in sets:
        kind = aset.get("contentType") or aset.get("mimeType", "").split("/")[0]
        reps = aset.findall(f"{_MPD_NS}Representation")
        templates = aset.findall(f".//{_MPD_NS}SegmentTemplate")
        scales = {t.get("timescale", "1") for t in templates}
        if len(scales) > 1:
            _fail("dash.timescale", f"AdaptationSet {aset.get('id')} mixes timescales {sorted(scales)}")
        for template in templates:
            for attr in ("initialization", "media"):
                _relative((template.get(attr) or "").replace("$RepresentationID$", "x"), layout.MANIFEST)
        if kind == "video":
            if aset.get("segmentAlignment") not in ("true", "1"):
                _fail("dash.segment-alignment", "video AdaptationSet lacks segmentAlignment=\"true\"")
            if not aset.get("par"):
                _fail("dash.video-attributes", "video AdaptationSet lacks @par")
            for rep in reps:
                for attr in ("sar", "frameRate"):
                    if not (rep.get(attr) or aset.get(attr)):
                        _fail("dash.video-attributes", f"video Representation {rep.get('id')} lacks @{attr}")
                checked = videos.get(rep.get("id", ""))
                if checked is not None:
                    count = _timeline_count(templates[0]) if templates else 0
                    if count != len(checked.starts):
                        _fail("dash.segment-count",
                              f"MPD lists {count} segments for {rep.get('id')}, its playlist {len(checked.starts)}")
        elif kind == "audio":
            if not aset.get("lang"):
                _fail("dash.audio-lang", "audio AdaptationSet lacks @lang")
            if audio is not None and templates and _timeline_count(templates[0]) != len(audio.starts):
                _fail("dash.segment-count", "MPD and the audio playlist list different segment counts")
    report.rules.append("dash.iop")


def _timeline_count(template: etree._Element) -> int:
    timeline = template.find(f"{_MPD_NS}SegmentTimeline")
    if timeline is None:
        return 0
    return sum(1 + int(s.get("r", "0")) for s in timeline.findall(f"{_MPD_NS}S"))
