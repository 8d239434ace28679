"""The object store every role talks to: one small async interface, its records and its errors.

Keys are relative, '/'-joined names (``media/<video>/720p/seg-00001.m4s``); a backend applies its
configured prefix (S3) or root directory (disk) itself, and hands keys back relative again.

Byte ranges follow Python slices, not HTTP: ``start`` is inclusive, ``end`` exclusive, both clipped
to the object; a negative ``start`` with no ``end`` asks for the last ``-start`` bytes (HTTP's
``bytes=-N``). HTTP ``bytes=a-b`` is ``get(key, a, b + 1)``.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import msgspec

# S3 refuses a completed multipart upload whose parts (all but the last) are smaller than this;
# the disk backend enforces the same rule so code that works on one works on the other.
MIN_PART_SIZE = 5 * 2**20
MAX_PARTS = 10_000


class StorageError(Exception):
    """The store refused or failed an operation (bad key, bad multipart assembly, denied)."""


class ObjectNotFound(StorageError):
    """No object (or no multipart upload) by that key."""


class UploadNotFound(ObjectNotFound):
    """No open multipart upload by that id: completed, aborted or never made."""


class StorageUnavailable(StorageError):
    """The store is down, refuses connections or did not answer in time.

    Callers answer 503 with ``Retry-After: retry_after`` (uploads) or fail a job retryably; what
    was acknowledged before stays stored.
    """

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ObjectInfo(msgspec.Struct, frozen=True):
    key: str  # relative, without the store's prefix
    size: int
    # Opaque, changes whenever the content does; quoted for an HTTP ETag header by the caller.
    etag: str
    mtime: float  # seconds since the epoch


class PartInfo(msgspec.Struct, frozen=True):
    part_number: int  # 1..10000, as in S3
    etag: str
    size: int


class MultipartUpload(msgspec.Struct, frozen=True):
    key: str
    upload_id: str
    initiated: float  # seconds since the epoch: a sweeper aborts uploads older than its expiry


@runtime_checkable
class ObjectStream(Protocol):
    """An open ranged read: what was found (``info``, the byte range) and its body in chunks.

    One GET gives both, so an edge can send headers before the body and coalesce misses on it.
    Use as ``async with await store.open_read(key) as stream: async for chunk in stream: ...``.
    """

    info: ObjectInfo
    start: int  # first byte of the body in the object
    end: int  # one past its last byte

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> ObjectStream: ...

    async def __aexit__(self, *exc: object) -> None: ...


@runtime_checkable
class ObjectStore(Protocol):
    """What StreamGate needs of a store; implemented by ``DiskStore`` and ``S3Store``."""

    name: str  # "disk" or "s3", for logs and readiness

    async def put(self, key: str, data: bytes | Path) -> str:
        """Store ``data`` (bytes, or the content of a local file) whole; returns the ETag."""

    async def put_file(self, key: str, path: Path) -> str:
        """Store a local file; big files go up as a multipart upload of ``part_size`` parts."""

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes, or a range of them. Raises ObjectNotFound."""

    async def open_read(self, key: str, start: int | None = None, end: int | None = None,
                        chunk_size: int = 256 * 1024) -> ObjectStream:
        """A streaming read for big objects. Raises ObjectNotFound before any body is read."""

    async def download(self, key: str, path: Path) -> ObjectInfo:
        """Copy the object to a local file (written to a temporary name, then renamed)."""

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size, ETag and mtime; None when there is no such object."""

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order, pages fetched as needed."""

    async def delete(self, key: str) -> None:
        """Remove an object; removing a missing one is not an error."""

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix``; returns how many were removed."""

    async def create_multipart(self, key: str) -> str:
        """Open a multipart upload to ``key``; returns its upload id."""

    async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> PartInfo:
        """Store one part (1-based); uploading a part number again replaces it."""

    async def upload_part_copy(self, key: str, upload_id: str, part_number: int, source_key: str,
                               start: int | None = None, end: int | None = None) -> PartInfo:
        """A part copied server side from (a range of) another object: nothing passes through us."""

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        """The parts stored so far, by part number. Raises UploadNotFound.

        Complete with the PartInfos upload_part returned when a part was sent twice: SeaweedFS
        lists both versions and the newest is told apart only to the second."""

    async def complete_multipart(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> str:
        """Join ``parts`` (ascending part numbers) into the object; returns its ETag."""

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an open upload and its parts; aborting a finished or unknown one is not an error."""

    def list_multipart_uploads(self, prefix: str = "") -> AsyncIterator[MultipartUpload]:
        """Open multipart uploads under ``prefix`` with their initiated time."""

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""


def check_key(key: str) -> str:
    """A relative key of '/'-joined names, or StorageError: no '..', no absolute path, no NUL."""
    if not key or key.startswith("/") or "\0" in key or "\\" in key:
        raise StorageError(f"bad object key {key!r}")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"bad object key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A key prefix: empty, or a key, optionally ending in '/'."""
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def clip_range(size: int, start: int | None, end: int | None) -> tuple[int, int]:
    """``start``/``end`` (slice rules, negative ``start`` = suffix) clipped to ``[0, size]``."""
    if start is not None and start < 0:
        if end is not None:
            raise StorageError("a suffix range (negative start) takes no end")
        return max(0, size + start), size
    lo = min(start or 0, size)
    hi = size if end is None else max(lo, min(end, size))
    return lo, hi


def check_parts(parts: Sequence[PartInfo]) -> None:
    """S3's rules for a completion, checked before asking: ascending numbers, 5 MiB but the last."""
    if not parts:
        raise StorageError("a multipart upload needs at least one part")
    numbers = [p.part_number for p in parts]
    if numbers != sorted(set(numbers)) or not all(1 <= n <= MAX_PARTS for n in numbers):
        raise StorageError(f"parts must have ascending part numbers in 1..{MAX_PARTS}: {numbers}")
    small = [p.part_number for p in parts[:-1] if p.size < MIN_PART_SIZE]
    if small:
        raise StorageError(f"parts {small} are smaller than {MIN_PART_SIZE} bytes and not the last")
