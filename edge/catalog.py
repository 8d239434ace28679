"""The video catalog: one record per video, SQLite on a single node, Redis in a fleet.

Both backends keep the same contract (tests/edge/test_catalog.py runs one suite over both).
A record is created by the tus POST (the video id is the upload id) and advanced by the upload's
completion and the broker's events; ``update(..., when=...)`` refuses to move a video out of a
state it has already left, so a late progress event never turns a ``ready`` video back.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import msgspec

from streamgate.common.redis_keys import DEFAULT_PREFIX
from streamgate.common.sqlite import SqliteThread

Status = Literal["uploading", "queued", "transcoding", "ready", "failed"]
STATUSES: tuple[str, ...] = ("uploading", "queued", "transcoding", "ready", "failed")
Visibility = Literal["public", "private"]


class Rendition(msgspec.Struct, kw_only=True):
    name: str
    width: int
    height: int
    bandwidth: int


class Video(msgspec.Struct, kw_only=True):
    id: str
    created_at: float
    title: str = ""
    filename: str = ""
    # The EIP-55 address of the wallet that uploaded it; empty when uploaded without sign-in.
    owner: str = ""
    visibility: Visibility = "public"
    priority: int = 0
    status: Status = "uploading"
    progress: float = 0.0
    # Seconds left as the farm estimates it; None when unknown.
    eta_s: float | None = None
    error: str = ""
    duration: float | None = None
    renditions: list[Rendition] = msgspec.field(default_factory=list)
    size: int = 0
    sha256: str = ""
    source: str = ""
    updated_at: float = 0.0
    # When the broker accepted the job; None while it still has to be (re)submitted.
    submitted_at: float | None = None
    # When the first progress event arrived: the base of the ETA.
    started_at: float | None = None


class VideoExists(Exception):
    """``create`` was given an id the catalog already holds."""


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Video).decode
T = TypeVar("T")
# What a read on the loop's connection gets instead of waiting (busy_timeout=0): the thread retries.
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class Catalog(Protocol):
    async def create(self, video: Video) -> None: ...
    async def get(self, video_id: str) -> Video | None: ...
    async def update(self, video_id: str, changes: dict[str, Any], *,
                     when: Collection[str] | None = None) -> Video | None:
        """Apply ``changes``; None when the video is missing or its status is not in ``when``."""
    async def page(self, *, limit: int, offset: int = 0, owner: str | None = None,
                   public_only: bool = False, after: tuple[float, str] | None = None) -> tuple[list[Video], int]:
        """Newest first: one page and the total count. ``after`` (the ``(created_at, id)`` of the
        previous page's last video) starts the page right after it, whatever ``offset`` says: a
        cursor that costs the same at any depth."""
    async def with_status(self, status: str) -> list[str]: ...
    async def delete(self, video_id: str) -> bool: ...
    async def close(self) -> None: ...


def _apply(video: Video, changes: dict[str, Any]) -> Video:
    changes = dict(changes, updated_at=time.time())
    if "renditions" in changes:
        changes["renditions"] = [r if isinstance(r, Rendition) else msgspec.convert(r, Rendition)
                                 for r in changes["renditions"]]
    return msgspec.structs.replace(video, **changes)


# Pages walk an index in (created_at, id) order for each listing (all, public, an owner's, an
# owner's public), so a page never sorts the catalog; ``video_counts`` holds each listing's total,
# kept by triggers, so a page never counts it either (issue 18: a first page cost O(n) both ways).
_SQLITE_INDEXES = """
DROP INDEX IF EXISTS videos_created;
CREATE INDEX IF NOT EXISTS videos_order ON videos (created_at, id);
CREATE INDEX IF NOT EXISTS videos_visibility_order ON videos (visibility, created_at, id);
CREATE INDEX IF NOT EXISTS videos_owner_order ON videos (owner, created_at, id);
CREATE INDEX IF NOT EXISTS videos_owner_visibility_order ON videos (owner, visibility, created_at, id);
CREATE INDEX IF NOT EXISTS videos_status ON videos (status);
CREATE TABLE IF NOT EXISTS video_counts (scope TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS videos_counted AFTER INSERT ON videos BEGIN
  INSERT INTO video_counts VALUES ('all', 1), ('owner:' || new.owner, 1)
    ON CONFLICT(scope) DO UPDATE SET n = n + 1;
  INSERT INTO video_counts SELECT 'public', 1 WHERE new.visibility = 'public'
    ON CONFLICT(scope) DO UPDATE SET n = n + 1;
  INSERT INTO video_counts SELECT 'public:' || new.owner, 1 WHERE new.visibility = 'public'
    ON CONFLICT(scope) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS videos_uncounted AFTER DELETE ON videos BEGIN
  UPDATE video_counts SET n = n - 1 WHERE scope IN ('all', 'owner:' || old.owner)
    OR (old.visibility = 'public' AND scope IN ('public', 'public:' || old.owner));
END;
"""


def _scope(owner: str | None, public_only: bool) -> str:
    if owner is None:
        return "public" if public_only else "all"
    return ("public:" if public_only else "owner:") + owner


class SqliteCatalog:
    """Single node: a table in the edge's SQLite file, queried on the store's own thread
    (common/sqlite.py): a locked file or a slow fsync never stalls the event loop."""

    def __init__(self, path: Path) -> None:
        self._db = SqliteThread(path, name="sqlite-catalog")
        self._db.call_sync(_create_schema)
        # Reads (a page, a record) run on the loop on a connection of their own that never
        # waits: in WAL a reader takes no lock a writer holds, and busy_timeout=0 turns the rare
        # one it would wait for (a WAL reset, recovery) into SQLITE_BUSY, answered by the thread.
        # Each thread hop is two wake-ups, and on a loaded machine each wake-up waits behind the
        # other runnable processes: that, not the query (0.1 ms), was a page's p99 (issue 18).
        # Not common.sqlite.connect: the file is in WAL already (the thread's connection made it
        # so), and setting the journal mode could itself wait for a lock.
        self._reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
        self._reader.execute("PRAGMA query_only=ON")

    async def create(self, video: Video) -> None:
        try:
            await self._db.execute("INSERT INTO videos VALUES (?, ?, ?, ?, ?, ?)",
                                   (video.id, video.created_at, video.status, video.owner,
                                    video.visibility, _encode(video)))
        except sqlite3.IntegrityError:
            raise VideoExists(video.id) from None

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._reader)
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in _BUSY:  # extended codes too
                raise
        if self._reader.in_transaction:
            self._reader.execute("ROLLBACK")
        return await self._db.call(fn)

    async def get(self, video_id: str) -> Video | None:
        def read(db: sqlite3.Connection) -> Video | None:
            row = db.execute("SELECT body FROM videos WHERE id = ?", (video_id,)).fetchone()
            return _decode(row[0]) if row else None

        return await self._read(read)

    async def update(self, video_id: str, changes: dict[str, Any], *,
                     when: Collection[str] | None = None) -> Video | None:
        # One function on the store's one thread: the transaction never interleaves with another.
        return await self._db.call(_update, video_id, changes, when)

    async def page(self, *, limit: int, offset: int = 0, owner: str | None = None,
                   public_only: bool = False, after: tuple[float, str] | None = None) -> tuple[list[Video], int]:
        where: list[str] = []
        args: list[object] = []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if public_only:
            where.append("visibility = 'public'")
        if after is not None:
            where.append("(created_at, id) < (?, ?)")
            args.extend(after)
            offset = 0
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        scope = _scope(owner, public_only)

        def query(db: sqlite3.Connection) -> tuple[list[Video], int]:
            db.execute("BEGIN")  # one snapshot: the count and the page agree
            try:
                row = db.execute("SELECT n FROM video_counts WHERE scope = ?", (scope,)).fetchone()
                total = row[0] if row else 0
                # An OFFSET walks index entries one by one (SQLite's B-trees are not counted):
                # past the middle the same page is walked to from the oldest end, so a jump
                # costs O(min(offset, total - offset)) and the last pages O(log n).
                order, skip, take = "DESC", offset, limit
                if after is None and offset > total // 2:
                    order, skip = "ASC", total - offset - limit
                    if skip < 0:
                        take, skip = max(0, limit + skip), 0
                # The page's ids from the index alone (an OFFSET skips index entries, not
                # records), then their records: only ``limit`` of them are read and decoded.
                rows = db.execute(
                    f"SELECT v.body FROM (SELECT id, created_at FROM videos{clause}"
                    f" ORDER BY created_at {order}, id {order} LIMIT ? OFFSET ?) AS p"
                    " JOIN videos AS v ON v.id = p.id ORDER BY p.created_at DESC, p.id DESC",
                    [*args, take, skip]).fetchall()
            finally:
                db.execute("COMMIT")
            return [_decode(r[0]) for r in rows], total

        return await self._read(query)

    async def with_status(self, status: str) -> list[str]:
        return [r[0] for r in await self._db.execute(
            "SELECT id FROM videos WHERE status = ? ORDER BY created_at", (status,))]

    async def delete(self, video_id: str) -> bool:
        return await self._db.rowcount("DELETE FROM videos WHERE id = ?", (video_id,)) > 0

    async def close(self) -> None:
        self._reader.close()
        await self._db.close()


def _create_schema(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS videos (id TEXT PRIMARY KEY, created_at REAL NOT NULL,"
        " status TEXT NOT NULL, owner TEXT NOT NULL, visibility TEXT NOT NULL, body BLOB NOT NULL)")
    db.executescript(_SQLITE_INDEXES)
    _count_existing(db)


def _count_existing(db: sqlite3.Connection) -> None:
    """A catalog made before ``video_counts`` existed: count its videos once."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("SELECT 1 FROM video_counts WHERE scope = 'all'").fetchone() is None:
            for statement in (
                    "INSERT INTO video_counts SELECT 'all', count(*) FROM videos",
                    "INSERT INTO video_counts SELECT 'public', count(*) FROM videos WHERE visibility = 'public'",
                    "INSERT INTO video_counts SELECT 'owner:' || owner, count(*) FROM videos GROUP BY owner",
                    "INSERT INTO video_counts SELECT 'public:' || owner, count(*) FROM videos"
                    " WHERE visibility = 'public' GROUP BY owner"):
                db.execute(statement)
    finally:
        db.execute("COMMIT")


def _update(db: sqlite3.Connection, video_id: str, changes: dict[str, Any],
            when: Collection[str] | None) -> Video | None:
    db.execute("BEGIN IMMEDIATE")
    try:
        row = db.execute("SELECT body FROM videos WHERE id = ?", (video_id,)).fetchone()
        if row is None:
            return None
        video = _decode(row[0])
        if when is not None and video.status not in when:
            return None
        video = _apply(video, changes)
        db.execute("UPDATE videos SET status = ?, body = ? WHERE id = ?",
                   (video.status, _encode(video), video_id))
        return video
    finally:
        db.execute("COMMIT")


# KEYS[1]: a listing's sorted set; ARGV: first rank, last rank, the records' key prefix.
# Returns {count, {record or false, ...}} (false: a record gone, skipped by the caller).
_REDIS_PAGE = """
local total = redis.call('ZCARD', KEYS[1])
local ids = redis.call('ZREVRANGE', KEYS[1], ARGV[1], ARGV[2])
if #ids == 0 then return {total, {}} end
local keys = {}
for i, id in ipairs(ids) do keys[i] = ARGV[3] .. id end
return {total, redis.call('MGET', unpack(keys))}
"""


class RedisCatalog:
    """Fleet: a msgpack value per video, a sorted set by creation time, a set per status.

    Updates are optimistic transactions (WATCH/MULTI), so two edges applying events to the same
    video never lose each other's change.
    """

    def __init__(self, redis: Any, prefix: str = DEFAULT_PREFIX) -> None:
        self._r = redis
        self._p = prefix
        self._page = redis.register_script(_REDIS_PAGE)

    def _key(self, video_id: str) -> str:
        return f"{self._p}video:{video_id}"

    def _index(self, owner: str | None, public_only: bool) -> str:
        if owner is not None:
            return f"{self._p}videos:owner:{owner}" + (":public" if public_only else "")
        return f"{self._p}videos:public" if public_only else f"{self._p}videos"

    def _status_key(self, status: str) -> str:
        return f"{self._p}videos:status:{status}"

    async def create(self, video: Video) -> None:
        if not await self._r.set(self._key(video.id), _encode(video), nx=True):
            raise VideoExists(video.id)
        async with self._r.pipeline(transaction=True) as pipe:
            score = {video.id: video.created_at}
            pipe.zadd(self._index(None, False), score)
            pipe.zadd(self._index(video.owner, False), score)
            if video.visibility == "public":
                pipe.zadd(self._index(None, True), score)
                pipe.zadd(self._index(video.owner, True), score)
            pipe.sadd(self._status_key(video.status), video.id)
            await pipe.execute()

    async def get(self, video_id: str) -> Video | None:
        raw = await self._r.get(self._key(video_id))
        return _decode(raw) if raw else None

    async def update(self, video_id: str, changes: dict[str, Any], *,
                     when: Collection[str] | None = None) -> Video | None:
        from redis.exceptions import WatchError

        key = self._key(video_id)
        while True:
            async with self._r.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if not raw:
                        return None
                    old = _decode(raw)
                    if when is not None and old.status not in when:
                        return None
                    new = _apply(old, changes)
                    pipe.multi()
                    pipe.set(key, _encode(new))
                    if new.status != old.status:
                        pipe.srem(self._status_key(old.status), video_id)
                        pipe.sadd(self._status_key(new.status), video_id)
                    await pipe.execute()
                    return new
                except WatchError:
                    continue

    async def page(self, *, limit: int, offset: int = 0, owner: str | None = None,
                   public_only: bool = False, after: tuple[float, str] | None = None) -> tuple[list[Video], int]:
        # ZREVRANGE by rank is O(log n + limit) at any offset: ``after`` is not needed here.
        # One script, one round trip (count, ranks, records), where three commands waited for
        # the loop three times: under load each wait is a turn behind every other runnable
        # process, which is what a page's p99 measured (issue 18). Atomic too: no record
        # deleted between the ranks and the read.
        if limit <= 0:
            return [], await self._r.zcard(self._index(owner, public_only))
        total, raws = await self._page(keys=[self._index(owner, public_only)],
                                       args=[offset, offset + limit - 1, self._key("")])
        return [_decode(raw) for raw in raws if raw], int(total)

    async def with_status(self, status: str) -> list[str]:
        return sorted(m.decode() for m in await self._r.smembers(self._status_key(status)))

    async def delete(self, video_id: str) -> bool:
        video = await self.get(video_id)
        if video is None:
            return False
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(video_id))
            for index in {self._index(None, False), self._index(None, True),
                          self._index(video.owner, False), self._index(video.owner, True)}:
                pipe.zrem(index, video_id)
            for status in STATUSES:
                pipe.srem(self._status_key(status), video_id)
            results = await pipe.execute()
        return bool(results[0])

    async def close(self) -> None:
        """The Redis client belongs to the app."""
