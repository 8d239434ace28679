"""Servable objects and the open-file cache: fd, stat and prebuilt headers keyed by path.

What separates a Python server from nginx on small files is per-request work: stat, open, header
building. Like nginx's ``open_file_cache``, an entry keeps the descriptor (or, for small files, the
bytes themselves) with its headers already serialized, and trusts its stat for
``edge.open_file_cache_valid`` seconds before checking the path again. The files are replaced by
rename (never rewritten in place), so an open descriptor always reads one consistent version.
"""

from __future__ import annotations

import os
import stat
import time
from collections import OrderedDict

from streamgate.common.config import EdgeConfig
from streamgate.edge.playback import names as media

EXPOSE = "Content-Length, Content-Range, ETag"


def cors_headers(config: EdgeConfig) -> dict[str, str]:
    headers = {"Access-Control-Allow-Origin": config.cors_allow_origin,
               "Access-Control-Expose-Headers": EXPOSE}
    if config.cors_allow_origin != "*":
        headers["Vary"] = "Origin"
    return headers


class Servable:
    """One version of one file, ready to answer: body bytes (hot) or an open descriptor."""

    __slots__ = ("key", "size", "etag", "content_type", "cache_control", "last_modified", "body",
                 "fd", "headers", "head_block", "full_block", "users", "evicted", "identity",
                 "checked_at", "expires_at", "depends", "fast_head", "fast_date")

    def __init__(self, key: str, size: int, etag: str, content_type: str, cache_control: str,
                 last_modified: str, cors: dict[str, str], body: bytes | None = None,
                 fd: int | None = None, identity: tuple[int, int, int] = (0, 0, 0),
                 expires_at: float = float("inf")) -> None:
        self.key = key
        self.size = size
        self.etag = etag
        self.content_type = content_type
        self.cache_control = cache_control
        self.last_modified = last_modified
        self.body = body
        self.fd = fd
        self.identity = identity
        self.checked_at = time.monotonic()
        self.expires_at = expires_at
        self.users = 0
        self.evicted = False
        # A growing master's Cache-Control depends on other files: re-derive it on each check.
        self.depends = False
        # aiohttp path: a dict; fast path: the same headers serialized once.
        self.headers = {"Content-Type": content_type, "ETag": etag, "Last-Modified": last_modified,
                        "Cache-Control": cache_control, "Accept-Ranges": "bytes", **cors}
        self.head_block = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items()).encode("latin-1")
        self.full_block = self.head_block + b"Content-Length: %d\r\n" % size
        # The fast path's whole 200 head, kept for the Date line it was built with (one a second).
        self.fast_head = b""
        self.fast_date = b""

    def acquire(self) -> None:
        self.users += 1

    def release(self) -> None:
        self.users -= 1
        if self.evicted and self.users == 0:
            self._close()

    def evict(self) -> None:
        self.evicted = True
        if self.users == 0:
            self._close()

    def _close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


class OpenFileCache:
    """LRU of :class:`Servable` by filesystem path, bounded by entries and by bytes held in memory."""

    def __init__(self, config: EdgeConfig, memory_bytes: int | None = None) -> None:
        self.config = config
        self.max_entries = max(1, config.open_file_cache_entries)
        self.valid_s = float(config.open_file_cache_valid)
        self.hot_max = int(config.memory_serve_max_size)
        self.memory_max = int(config.memory_cache_size if memory_bytes is None else memory_bytes)
        self.memory_used = 0
        self.cors = cors_headers(config)
        self.entries: OrderedDict[str, Servable] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, path: str, rel: str, video_dir: str | None,
            meta: tuple[str, str, str] | None = None) -> Servable | None:
        """The servable for ``path``, or None when no regular file is there.

        ``meta`` (etag, cache_control, content_type) overrides what the file itself would say:
        the disk cache keeps the origin's validators.
        """
        entry = self.entries.get(path)
        now = time.monotonic()
        if entry is not None:
            if now - entry.checked_at < self.valid_s:
                self.entries.move_to_end(path)
                self.hits += 1
                return entry
            try:
                st = os.stat(path)
            except OSError:
                self._drop(path)
                return None
            if (st.st_ino, st.st_size, st.st_mtime_ns) == entry.identity and not entry.depends:
                entry.checked_at = now
                self.entries.move_to_end(path)
                self.hits += 1
                return entry
            self._drop(path)
        self.misses += 1
        entry = self._load(path, rel, video_dir, meta)
        if entry is not None:
            self._insert(path, entry)
        return entry

    def _load(self, path: str, rel: str, video_dir: str | None,
              meta: tuple[str, str, str] | None) -> Servable | None:
        # Never through a symlink (issue 14): not the file (O_NOFOLLOW), nor a video or rendition
        # folder (the resolved folder must be the folder itself; the media root is resolved).
        # Only on a cache miss: a hit re-checks the file's identity, which a swapped-in link changes.
        # The open comes first: a file that is not here (an edge answering from its hot tiers)
        # costs one failed open, not the realpath's lstat of every folder on the way.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None
        keep = False
        try:
            folder = os.path.dirname(path)
            if os.path.realpath(folder) != folder:
                return None
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            identity = (st.st_ino, st.st_size, st.st_mtime_ns)
            body = None
            if st.st_size <= self.hot_max or media.is_playlist(rel):
                body = _read_all(fd, st.st_size)
            live = False
            if meta is not None:
                etag, cache_control, ctype = meta
            else:
                etag = media.make_etag(st.st_size, st.st_mtime_ns)
                live = media.is_playlist(rel) and media.playlist_is_live(rel, body or b"", video_dir)
                cache_control = media.cache_control(rel, live, self.config)
                ctype = media.content_type(rel)
            keep = body is None
            entry = Servable(path, len(body) if body is not None else st.st_size, etag, ctype,
                            cache_control, media.http_date(st.st_mtime), self.cors, body=body,
                            fd=fd if keep else None, identity=identity)
            entry.depends = meta is None and live and media.is_master(body or b"")
            return entry
        finally:
            if not keep:
                os.close(fd)

    def _insert(self, path: str, entry: Servable) -> None:
        if entry.body is not None:
            self.memory_used += len(entry.body)
        self.entries[path] = entry
        while len(self.entries) > self.max_entries or (
                self.memory_used > self.memory_max and len(self.entries) > 1):
            oldest = next(iter(self.entries))
            self._drop(oldest)
        if self.memory_used > self.memory_max and entry.body is not None:
            self._drop(path)  # too big to keep: answered once from the bytes just read

    def _drop(self, path: str) -> None:
        entry = self.entries.pop(path, None)
        if entry is not None:
            if entry.body is not None:
                self.memory_used -= len(entry.body)
            entry.evict()

    def close(self) -> None:
        for path in list(self.entries):
            self._drop(path)


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, max(size - offset, 65536), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
