"""Every name in a data dir and a video's media tree, in one place.

A data dir (``storage.data_dir``) holds per-host folders; a video's media tree
(``<media>/<id>/``) holds what the farm publishes and the edges serve:

    master.m3u8  manifest.mpd  poster.jpg  <rendition>/{init.mp4, index.m3u8, <n>.m4s}  audio/...

The farm's pipeline writes these names and the edge builds its URLs from them; neither spells
them itself.
"""

from __future__ import annotations

# A video's media tree (ARCHITECTURE.md "Media output").
MASTER = "master.m3u8"  # HLS multivariant playlist (RFC 8216 4.3.4)
MANIFEST = "manifest.mpd"  # DASH MPD over the same CMAF segments
POSTER = "poster.jpg"
MEDIA_PLAYLIST = "index.m3u8"  # one per rendition folder
INIT = "init.mp4"  # CMAF header of a rendition
AUDIO_FOLDER = "audio"

# A data dir's folders.
UPLOADS = "uploads"  # tus partial files
SOURCES = "sources"  # completed uploads: sources/<id>/source.<ext>
MEDIA = "media"  # published ladders: media/<id>/...
CACHE = "cache"  # the edge's disk cache of origin or store objects
STATE = "state"  # durable per-host state: SQLite stores, the journal, the auth secret
RUN = "run"  # sockets, locks and Prometheus multiprocess files of running processes

# Files under STATE.
EDGE_DB = "edge.sqlite3"
JOURNAL_DB = "broker-journal.sqlite3"
AUTH_SECRET = "auth-secret"
# Under RUN.
PROMETHEUS = "prometheus"


# Object keys in the store (storage.backend: s3); the disk backend rooted at the data dir maps
# the same keys to the same paths, so one name serves both.
def source_key(video_id: str, extension: str) -> str:
    return f"{SOURCES}/{video_id}/source.{extension}"


def media_prefix(video_id: str) -> str:
    return f"{MEDIA}/{video_id}"


def media_key(video_id: str, rel: str) -> str:
    return f"{MEDIA}/{video_id}/{rel}"
