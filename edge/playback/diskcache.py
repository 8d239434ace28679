"""The bounded local disk cache of files pulled from an origin, evicted least-recently-used first.

Layout: ``data/cache/media/<id>/<rel>`` plus ``<rel>.meta`` (the origin's validators, msgpack).
The sidecar's mtime is the entry's last use (touched at most once a minute per entry), so the
order survives restarts and is shared by every edge process on the node. Eviction scans the tree;
it runs when this process's estimate of the total passes ``edge.disk_cache_size``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import msgspec

log = logging.getLogger("streamgate.edge.cache")

META_SUFFIX = ".meta"
TOUCH_INTERVAL_S = 60.0


class CacheMeta(msgspec.Struct, frozen=True):
    etag: str
    cache_control: str
    content_type: str
    last_modified: str
    size: int
    fetched_at: float  # wall clock, seconds
    max_age_s: float  # fresh until fetched_at + max_age_s

    def fresh(self, now: float) -> bool:
        return now < self.fetched_at + self.max_age_s


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(CacheMeta).decode


class DiskCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._metas: dict[str, CacheMeta] = {}
        self._touched: dict[str, float] = {}
        self.estimate = self.scan_total()
        self.evictions = 0

    def path(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> CacheMeta | None:
        """The fresh entry for ``key`` (its file is at ``path(key)``), or None."""
        meta = self._metas.get(key)
        if meta is None:
            try:
                meta = _decode((self.root / (key + META_SUFFIX)).read_bytes())
            except (OSError, msgspec.DecodeError):
                return None
            self._metas[key] = meta
        now = time.time()
        if not meta.fresh(now):
            self._metas.pop(key, None)
            return None
        if not self.path(key).exists():
            self._metas.pop(key, None)
            return None
        last = self._touched.get(key, 0.0)
        if now - last > TOUCH_INTERVAL_S:
            self._touched[key] = now
            try:
                os.utime(self.root / (key + META_SUFFIX))
            except OSError:
                pass
        return meta

    def temp_path(self, key: str) -> Path:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A leading dot: never a valid media name, so a half-written file is never served.
        return target.parent / f".{target.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"

    def commit(self, key: str, temp: Path, meta: CacheMeta) -> None:
        """Publish a fully written temp file under ``key`` (rename: readers never see half)."""
        target = self.path(key)
        meta_path = self.root / (key + META_SUFFIX)
        meta_temp = target.parent / f".{target.name}.meta.{os.getpid()}.tmp"
        meta_temp.write_bytes(_encode(meta))
        os.replace(temp, target)
        os.replace(meta_temp, meta_path)
        self._metas[key] = meta
        self._touched[key] = time.time()
        self.estimate += meta.size
        if self.estimate > self.max_bytes:
            self.evict()

    def scan(self) -> list[tuple[float, str, int]]:
        """(last use, key, size) of every complete entry."""
        found = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if not name.endswith(META_SUFFIX) or name.startswith("."):
                    continue
                meta_path = os.path.join(dirpath, name)
                data_path = meta_path[: -len(META_SUFFIX)]
                try:
                    used = os.stat(meta_path).st_mtime
                    size = os.stat(data_path).st_size
                except OSError:
                    continue
                found.append((used, os.path.relpath(data_path, self.root), size))
        return found

    def scan_total(self) -> int:
        return sum(size for _, _, size in self.scan())

    def evict(self) -> int:
        """Remove least recently used entries until the total fits; returns bytes freed."""
        entries = sorted(self.scan())
        total = sum(size for _, _, size in entries)
        freed = 0
        for _used, key, size in entries:
            if total <= self.max_bytes:
                break
            for path in (self.root / (key + META_SUFFIX), self.root / key):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
            self._metas.pop(key, None)
            self._touched.pop(key, None)
            total -= size
            freed += size
            self.evictions += 1
        self.estimate = total
        if freed:
            log.info("disk cache: evicted %d bytes, %d bytes kept (bound %d)", freed, total, self.max_bytes)
        return freed
