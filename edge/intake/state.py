"""Durable tus upload state and the per-upload lock; SQLite + flock on one node, Redis in a fleet.

The state holds the *acknowledged* offset: the data up to it was fsynced before it was saved, so
what a HEAD reports is always on disk (tus 1.0 "Upload-Offset"). Bytes past it in the partial file
were never acknowledged and are cut off before the next PATCH writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import msgspec

from streamgate.common.redis_keys import DEFAULT_PREFIX
from streamgate.common.sqlite import SqliteThread

# tus creation-defer-length: an upload's ``length`` until a PATCH's Upload-Length sets it.
UNKNOWN_LENGTH = -1

# How long a terminated or expired upload answers 410 Gone instead of 404 (tus 1.0 termination).
TOMBSTONE_TTL_S = 7 * 24 * 3600


class StoredPart(msgspec.Struct, frozen=True):
    """One part of an upload's S3 multipart upload, acknowledged once the store returned its ETag."""

    number: int
    etag: str
    size: int


class Upload(msgspec.Struct, kw_only=True):
    id: str
    length: int
    offset: int = 0
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    owner: str = ""
    created_at: float
    expires_at: float
    # Completion ran: the source moved into place, the video queued.
    done: bool = False
    # storage.backend: s3 (edge/intake/s3_upload.py), empty on disk. The bytes up to ``offset`` are
    # the ``parts`` of the multipart upload ``multipart_id`` to ``source_key`` followed by the first
    # ``tail_size`` bytes of the tail object (uploads/<id>/tail), kept apart until it grows to a
    # whole part or the upload completes: offset == sum(part sizes) + tail_size.
    source_key: str = ""
    multipart_id: str = ""
    parts: list[StoredPart] = msgspec.field(default_factory=list)
    tail_size: int = 0
    # tus concatenation (edge/intake/concat.py): a partial upload is never a video of its own; a
    # final one is made of the partial uploads ``concat`` (ids, in order) and is created whole
    # (offset == length): its completion assembles them into its source.
    partial: bool = False
    concat: list[str] = msgspec.field(default_factory=list)


class UploadLocked(Exception):
    """Another request (here or on another edge) holds this upload."""


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Upload).decode


class UploadStore(Protocol):
    async def create(self, upload: Upload) -> None: ...
    async def get(self, upload_id: str) -> Upload | None: ...
    async def save(self, upload: Upload) -> None: ...
    async def remove(self, upload_id: str) -> None:
        """Forget the upload and leave a tombstone so it answers 410."""
    async def is_gone(self, upload_id: str) -> bool: ...
    async def expired(self, now: float) -> list[Upload]: ...
    async def pending(self) -> list[Upload]:
        """Uploads whose every byte arrived but whose completion has not run (a crash in between)."""
    def lock(self, upload_id: str, wait_s: float) -> contextlib.AbstractAsyncContextManager[None]: ...
    async def close(self) -> None: ...


class SqliteUploadStore:
    """Single node: rows in the edge's SQLite file, ``flock`` on a lock file per upload.

    ``flock`` locks die with their process, so a ``kill -9`` mid-PATCH never leaves an upload locked.
    """

    def __init__(self, path: Path, lock_dir: Path) -> None:
        # Its own thread (common/sqlite.py): a PATCH's acknowledged offset is a FULL-synced commit.
        self._db = SqliteThread(path, name="sqlite-uploads")
        self._db.call_sync(_create_schema)
        self._lock_dir = lock_dir
        lock_dir.mkdir(parents=True, exist_ok=True)

    async def create(self, upload: Upload) -> None:
        await self._db.execute("INSERT INTO uploads VALUES (?, ?, ?, ?)",
                               (upload.id, upload.expires_at, int(upload.done), _encode(upload)))

    async def get(self, upload_id: str) -> Upload | None:
        rows = await self._db.execute("SELECT body FROM uploads WHERE id = ?", (upload_id,))
        return _decode(rows[0][0]) if rows else None

    async def save(self, upload: Upload) -> None:
        await self._db.execute("UPDATE uploads SET expires_at = ?, done = ?, body = ? WHERE id = ?",
                               (upload.expires_at, int(upload.done), _encode(upload), upload.id))

    async def remove(self, upload_id: str) -> None:
        def remove(db: sqlite3.Connection) -> None:
            now = time.time()
            db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
            db.execute("INSERT OR REPLACE INTO upload_tombstones VALUES (?, ?)", (upload_id, now))
            db.execute("DELETE FROM upload_tombstones WHERE at < ?", (now - TOMBSTONE_TTL_S,))

        await self._db.call(remove)
        with contextlib.suppress(FileNotFoundError):
            (self._lock_dir / f"{upload_id}.lock").unlink()

    async def is_gone(self, upload_id: str) -> bool:
        return bool(await self._db.execute("SELECT 1 FROM upload_tombstones WHERE id = ?", (upload_id,)))

    async def expired(self, now: float) -> list[Upload]:
        return [_decode(r[0]) for r in await self._db.execute(
            "SELECT body FROM uploads WHERE expires_at < ?", (now,))]

    async def pending(self) -> list[Upload]:
        rows = await self._db.execute("SELECT body FROM uploads WHERE done = 0")
        return [u for u in (_decode(r[0]) for r in rows) if u.offset == u.length]

    @contextlib.asynccontextmanager
    async def lock(self, upload_id: str, wait_s: float) -> AsyncIterator[None]:
        fd = os.open(self._lock_dir / f"{upload_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise UploadLocked(upload_id) from None
                    await asyncio.sleep(0.02)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    async def close(self) -> None:
        await self._db.close()


def _create_schema(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS uploads (id TEXT PRIMARY KEY,"
               " expires_at REAL NOT NULL, done INTEGER NOT NULL, body BLOB NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS upload_tombstones (id TEXT PRIMARY KEY, at REAL NOT NULL)")


# Release the lock only if we still own it (the Redis "SET NX PX" lock pattern).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


class RedisUploadStore:
    """Fleet: state and lock in Redis so any edge continues any upload (no sticky sessions).

    The lock expires unless renewed, so an edge killed mid-PATCH frees it within ``lock_ttl_s``.
    """

    def __init__(self, redis: Any, prefix: str = DEFAULT_PREFIX, lock_ttl_s: float = 15.0) -> None:
        self._r = redis
        self._p = prefix
        self._lock_ttl_ms = int(lock_ttl_s * 1000)

    def _key(self, upload_id: str) -> str:
        return f"{self._p}upload:{upload_id}"

    async def create(self, upload: Upload) -> None:
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.set(self._key(upload.id), _encode(upload))
            pipe.zadd(f"{self._p}uploads:expiry", {upload.id: upload.expires_at})
            if upload.offset == upload.length and not upload.done:  # a final upload (concatenation)
                pipe.sadd(f"{self._p}uploads:pending", upload.id)
            await pipe.execute()

    async def get(self, upload_id: str) -> Upload | None:
        raw = await self._r.get(self._key(upload_id))
        return _decode(raw) if raw else None

    async def save(self, upload: Upload) -> None:
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.set(self._key(upload.id), _encode(upload))
            pipe.zadd(f"{self._p}uploads:expiry", {upload.id: upload.expires_at})
            if upload.offset == upload.length and not upload.done:
                pipe.sadd(f"{self._p}uploads:pending", upload.id)
            else:
                pipe.srem(f"{self._p}uploads:pending", upload.id)
            await pipe.execute()

    async def remove(self, upload_id: str) -> None:
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(upload_id))
            pipe.zrem(f"{self._p}uploads:expiry", upload_id)
            pipe.srem(f"{self._p}uploads:pending", upload_id)
            pipe.set(f"{self._p}upload-gone:{upload_id}", b"1", ex=TOMBSTONE_TTL_S)
            await pipe.execute()

    async def is_gone(self, upload_id: str) -> bool:
        return bool(await self._r.exists(f"{self._p}upload-gone:{upload_id}"))

    async def _many(self, ids: list[bytes]) -> list[Upload]:
        if not ids:
            return []
        raws = await self._r.mget([self._key(i.decode()) for i in ids])
        return [_decode(raw) for raw in raws if raw]

    async def expired(self, now: float) -> list[Upload]:
        return await self._many(await self._r.zrangebyscore(f"{self._p}uploads:expiry", "-inf", now))

    async def pending(self) -> list[Upload]:
        uploads = await self._many(list(await self._r.smembers(f"{self._p}uploads:pending")))
        return [u for u in uploads if u.offset == u.length and not u.done]

    @contextlib.asynccontextmanager
    async def lock(self, upload_id: str, wait_s: float) -> AsyncIterator[None]:
        key = f"{self._p}upload-lock:{upload_id}"
        token = secrets.token_hex(16)
        deadline = time.monotonic() + wait_s
        while not await self._r.set(key, token, nx=True, px=self._lock_ttl_ms):
            if time.monotonic() >= deadline:
                raise UploadLocked(upload_id)
            await asyncio.sleep(0.02)
        renewer = asyncio.create_task(self._renew(key, token), name=f"upload-lock-{upload_id}")
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await self._r.eval(_RELEASE, 1, key, token)

    async def _renew(self, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(self._lock_ttl_ms / 3000)
            await self._r.eval(_RENEW, 1, key, token, self._lock_ttl_ms)

    async def close(self) -> None:
        """The Redis client belongs to the app."""
