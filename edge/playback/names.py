"""The media tree's rules: which names exist, their Content-Type, ETag and Cache-Control.

``data/media/<id>/`` holds ``master.m3u8``, ``manifest.mpd``, ``poster.jpg`` and one folder per
rendition (``720p/``, ``audio/``) with ``init.mp4``, numbered ``.m4s`` segments and ``index.m3u8``.
Every name is checked against a strict alphabet before it touches the filesystem, so no request
can leave the tree (``..``, encoded slashes, absolute paths and NUL bytes never match).
"""

from __future__ import annotations

import os
import re
from email.utils import formatdate
from urllib.parse import unquote

from streamgate.common.config import EdgeConfig

# tus ids, uuids and urlsafe tokens all fit; a dot never does, so ``..`` cannot be an id.
VIDEO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
# One path segment: starts with an alphanumeric (no dot files, no ``..``), then a small alphabet.
SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_DEPTH = 2  # <file> or <rendition>/<file>

CONTENT_TYPES: dict[str, str] = {
    ".m3u8": "application/vnd.apple.mpegurl",  # RFC 8216 section 4
    ".mpd": "application/dash+xml",  # ISO/IEC 23009-1 annex C
    ".m4s": "video/mp4",
    ".mp4": "video/mp4",
    ".m4a": "audio/mp4",
    ".jpg": "image/jpeg",
    ".vtt": "text/vtt",
}
AUDIO_FOLDERS = frozenset({"audio"})
IMMUTABLE = "public, max-age=31536000, immutable"
PLAYLIST_EXTENSIONS = frozenset({".m3u8", ".mpd"})


class BadMediaPath(ValueError):
    """A playback path that is not a name of the media tree (the message says why)."""


def parse_media_path(video_id: str, rel: str) -> tuple[str, str]:
    """Validate ``video_id`` and the decoded path below it; returns (video_id, normalized rel)."""
    if "%" in rel or "%" in video_id:
        # A name in the tree never needs escaping, so a second layer of encoding is an attack.
        rel, video_id = unquote(rel), unquote(video_id)
        if "%" in rel or "%" in video_id:
            raise BadMediaPath("doubly encoded path")
    if not VIDEO_ID.fullmatch(video_id):
        raise BadMediaPath("invalid video id")
    parts = rel.split("/")
    if not 1 <= len(parts) <= MAX_DEPTH:
        raise BadMediaPath("path too deep")
    for part in parts:
        if not SEGMENT.fullmatch(part) or ".." in part:
            raise BadMediaPath("invalid file name")
    if extension(parts[-1]) not in CONTENT_TYPES:
        raise BadMediaPath("not a media file type")
    return video_id, "/".join(parts)


def extension(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def content_type(rel: str) -> str:
    ext = extension(rel)
    folder = rel.split("/", 1)[0] if "/" in rel else ""
    if ext in (".m4s", ".mp4") and folder in AUDIO_FOLDERS:
        return "audio/mp4"
    return CONTENT_TYPES[ext]


def is_playlist(rel: str) -> bool:
    return extension(rel) in PLAYLIST_EXTENSIONS


def make_etag(size: int, mtime_ns: int) -> str:
    # nginx's form (hex mtime - hex size): cheap, and changes whenever a rename replaces the file.
    return f'"{mtime_ns // 1000:x}-{size:x}"'


def http_date(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)


def playlist_is_live(rel: str, body: bytes, video_dir: str | None) -> bool:
    """Whether a playlist may still change: the short max-age applies while it grows."""
    ext = extension(rel)
    if ext == ".mpd":
        # DASH-IF IOP: a dynamic MPD is updated in place; a static one is final.
        return b'type="dynamic"' in body
    if is_master(body):
        # A master playlist never changes itself; its video is complete once every media
        # playlist it names carries EXT-X-ENDLIST (RFC 8216 section 4.3.3.4).
        if video_dir is None:
            return True
        return not _media_playlists_ended(body, video_dir)
    return b"#EXT-X-ENDLIST" not in body


def is_master(body: bytes) -> bool:
    return b"#EXT-X-STREAM-INF" in body or b"#EXT-X-MEDIA:" in body


_URI_ATTR = re.compile(rb'URI="([^"]+)"')


def _media_playlists_ended(master: bytes, video_dir: str) -> bool:
    uris: list[bytes] = _URI_ATTR.findall(master)
    uris += [line.strip() for line in master.splitlines() if line.strip() and not line.startswith(b"#")]
    for uri in uris:
        name = uri.decode("utf-8", "replace")
        try:
            _, rel = parse_media_path("x", name)
        except BadMediaPath:
            return False
        try:
            with open(os.path.join(video_dir, rel), "rb") as f:
                if b"#EXT-X-ENDLIST" not in f.read():
                    return False
        except OSError:
            return False
    return bool(uris)


def cache_control(rel: str, live: bool, config: EdgeConfig) -> str:
    if not is_playlist(rel):
        if extension(rel) == ".jpg":
            return f"public, max-age={int(config.vod_playlist_max_age)}"
        return IMMUTABLE
    age = config.live_playlist_max_age if live else config.vod_playlist_max_age
    return f"public, max-age={int(age)}"


def max_age_of(cache_control_value: str) -> float:
    for part in cache_control_value.split(","):
        name, _, value = part.strip().partition("=")
        if name == "max-age" and value.isdigit():
            return float(value)
    return 0.0


def cache_control_default(rel: str, vod_max_age_s: float) -> str:
    """For a pulled file whose origin said nothing: segments are immutable, playlists may grow."""
    if not is_playlist(rel):
        return IMMUTABLE if extension(rel) != ".jpg" else f"public, max-age={int(vod_max_age_s)}"
    return "public, max-age=1"
