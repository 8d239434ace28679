"""The single-node backend: objects are files under a root directory.

Writes go to a temporary name in the same directory, are fsynced, then renamed over the key, so a
reader sees the old object or the new one, never half of one (also after a kill -9). Multipart
uploads keep their parts as files in ``<root>/.multipart/<upload id>/`` and are completed by
concatenating them into a temporary file that is renamed like any other write. File I/O runs in
threads so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import msgspec

from streamgate.common.storage.base import (
    MAX_PARTS,
    MultipartUpload,
    ObjectInfo,
    ObjectNotFound,
    PartInfo,
    StorageError,
    UploadNotFound,
    check_key,
    check_parts,
    check_prefix,
    clip_range,
)

MULTIPART_DIR = ".multipart"
_TMP_SUFFIX = ".sg-tmp"
_COPY_CHUNK = 1 << 20


class _UploadMeta(msgspec.Struct, frozen=True):
    key: str
    initiated: float


def _etag(st: os.stat_result) -> str:
    # Size and mtime in ns, as nginx does: cheap, and it changes whenever a rename replaces the file.
    return f"{st.st_size:x}-{st.st_mtime_ns:x}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskStream:
    """A ranged read of one file, opened before the first chunk so a miss raises at once."""

    def __init__(self, fileobj, info: ObjectInfo, start: int, end: int, chunk_size: int) -> None:  # type: ignore[no-untyped-def]
        self._file = fileobj
        self.info = info
        self.start = start
        self.end = end
        self._chunk = chunk_size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        left = self.end - self.start
        while left > 0:
            data = await asyncio.to_thread(os.pread, self._file.fileno(), min(self._chunk, left),
                                           self.end - left)
            if not data:
                break
            left -= len(data)
            yield data

    async def aclose(self) -> None:
        self._file.close()

    async def __aenter__(self) -> DiskStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class DiskStore:
    name = "disk"

    def __init__(self, root: Path, part_size: int = 8 * 2**20) -> None:
        self.root = Path(root)
        self.part_size = part_size
        self._mp_root = self.root / MULTIPART_DIR

    # -- paths ---------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        check_key(key)
        if key.split("/", 1)[0] == MULTIPART_DIR or key.endswith(_TMP_SUFFIX):
            raise StorageError(f"bad object key {key!r}: reserved name")
        return self.root / key

    def _upload_dir(self, upload_id: str) -> Path:
        if not upload_id or not all(c in "0123456789abcdef" for c in upload_id):
            raise UploadNotFound(f"no multipart upload {upload_id!r}")
        return self._mp_root / upload_id

    def _info(self, key: str, st: os.stat_result) -> ObjectInfo:
        return ObjectInfo(key=key, size=st.st_size, etag=_etag(st), mtime=st.st_mtime)

    # -- whole objects -------------------------------------------------------------------------

    def _write_atomic(self, path: Path, write) -> str:  # type: ignore[no-untyped-def]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{_TMP_SUFFIX}")
        try:
            with open(tmp, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return _etag(path.stat())

    def _put(self, key: str, data: bytes | Path) -> str:
        path = self._path(key)
        if isinstance(data, (bytes, bytearray, memoryview)):
            return self._write_atomic(path, lambda out: out.write(data))

        def copy(out) -> None:  # type: ignore[no-untyped-def]
            with open(data, "rb") as src:
                shutil.copyfileobj(src, out, _COPY_CHUNK)

        return self._write_atomic(path, copy)

    async def put(self, key: str, data: bytes | Path) -> str:
        return await asyncio.to_thread(self._put, key, data)

    async def put_file(self, key: str, path: Path) -> str:
        return await asyncio.to_thread(self._put, key, Path(path))

    def _read(self, key: str, start: int | None, end: int | None) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                lo, hi = clip_range(os.fstat(f.fileno()).st_size, start, end)
                return os.pread(f.fileno(), hi - lo, lo)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        return await asyncio.to_thread(self._read, key, start, end)

    def _open(self, key: str, start: int | None, end: int | None, chunk_size: int) -> DiskStream:
        path = self._path(key)
        try:
            f = open(path, "rb")  # noqa: SIM115 -- closed by DiskStream.aclose
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        st = os.fstat(f.fileno())
        lo, hi = clip_range(st.st_size, start, end)
        return DiskStream(f, self._info(key, st), lo, hi, chunk_size)

    async def open_read(self, key: str, start: int | None = None, end: int | None = None,
                        chunk_size: int = 256 * 1024) -> DiskStream:
        return await asyncio.to_thread(self._open, key, start, end, chunk_size)

    def _download(self, key: str, path: Path) -> ObjectInfo:
        src = self._path(key)
        try:
            f = open(src, "rb")  # noqa: SIM115
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        with f:
            info = self._info(key, os.fstat(f.fileno()))
            self._write_atomic(Path(path), lambda out: shutil.copyfileobj(f, out, _COPY_CHUNK))
        return info

    async def download(self, key: str, path: Path) -> ObjectInfo:
        return await asyncio.to_thread(self._download, key, path)

    def _head(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return self._info(key, st) if not os.path.isdir(self._path(key)) else None

    async def head(self, key: str) -> ObjectInfo | None:
        return await asyncio.to_thread(self._head, key)

    def _scan(self, prefix: str) -> builtins.list[ObjectInfo]:
        check_prefix(prefix)
        # Walk only the directory the prefix names; its last partial name filters the entries.
        base, _, _ = prefix.rpartition("/")
        top = self.root / base if base else self.root
        found: builtins.list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(top):
            rel_dir = os.path.relpath(dirpath, self.root)
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d != MULTIPART_DIR]
                rel_dir = ""
            for name in filenames:
                if name.endswith(_TMP_SUFFIX):
                    continue
                key = f"{rel_dir}/{name}" if rel_dir else name
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                found.append(self._info(key, st))
        found.sort(key=lambda i: i.key)
        return found

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        for info in await asyncio.to_thread(self._scan, prefix):
            yield info

    def _delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        # Drop directories the delete left empty, up to the root, as S3 has no directories.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, key)

    def _delete_prefix(self, prefix: str) -> int:
        infos = self._scan(prefix)
        for info in infos:
            self._delete(info.key)
        return len(infos)

    async def delete_prefix(self, prefix: str) -> int:
        return await asyncio.to_thread(self._delete_prefix, prefix)

    # -- multipart -----------------------------------------------------------------------------

    def _create(self, key: str) -> str:
        self._path(key)
        upload_id = uuid.uuid4().hex
        folder = self._mp_root / upload_id
        folder.mkdir(parents=True)
        meta = msgspec.json.encode(_UploadMeta(key=key, initiated=time.time()))
        self._write_atomic(folder / "upload.json", lambda out: out.write(meta))
        return upload_id

    async def create_multipart(self, key: str) -> str:
        return await asyncio.to_thread(self._create, key)

    def _meta(self, key: str, upload_id: str) -> tuple[Path, _UploadMeta]:
        folder = self._upload_dir(upload_id)
        try:
            meta = msgspec.json.decode((folder / "upload.json").read_bytes(), type=_UploadMeta)
        except (FileNotFoundError, msgspec.DecodeError):
            raise UploadNotFound(f"no multipart upload {upload_id!r}") from None
        if meta.key != key:
            raise UploadNotFound(f"multipart upload {upload_id!r} is not for {key!r}")
        return folder, meta

    def _store_part(self, key: str, upload_id: str, part_number: int, write) -> PartInfo:  # type: ignore[no-untyped-def]
        if not 1 <= part_number <= MAX_PARTS:
            raise StorageError(f"part number {part_number} is not in 1..{MAX_PARTS}")
        folder, _ = self._meta(key, upload_id)
        digest = hashlib.md5(usedforsecurity=False)
        size = 0

        def hashed(out) -> None:  # type: ignore[no-untyped-def]
            nonlocal size
            for chunk in write():
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)

        # The part's MD5 is its ETag (as in S3) and is kept in its file name, so list_parts never
        # reads the parts; a part uploaded again replaces the older file of that number.
        stale = self._part_files(folder).get(part_number, [])
        tmp = folder / f"part-{part_number:05d}"
        self._write_atomic(tmp, hashed)
        os.replace(tmp, folder / f"part-{part_number:05d}-{digest.hexdigest()}")
        for old in stale:
            if old.name != f"part-{part_number:05d}-{digest.hexdigest()}":
                old.unlink(missing_ok=True)
        return PartInfo(part_number=part_number, etag=digest.hexdigest(), size=size)

    @staticmethod
    def _part_files(folder: Path) -> dict[int, builtins.list[Path]]:
        files: dict[int, builtins.list[Path]] = {}
        for path in folder.glob("part-*-*"):
            if not path.name.endswith(_TMP_SUFFIX):
                files.setdefault(int(path.name[5:10]), []).append(path)
        return files

    async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> PartInfo:
        return await asyncio.to_thread(self._store_part, key, upload_id, part_number, lambda: [data])

    async def upload_part_copy(self, key: str, upload_id: str, part_number: int, source_key: str,
                               start: int | None = None, end: int | None = None) -> PartInfo:
        src = self._path(source_key)

        def chunks():  # type: ignore[no-untyped-def]
            try:
                f = open(src, "rb")  # noqa: SIM115
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise ObjectNotFound(source_key) from None
            with f:
                lo, hi = clip_range(os.fstat(f.fileno()).st_size, start, end)
                while lo < hi:
                    data = os.pread(f.fileno(), min(_COPY_CHUNK, hi - lo), lo)
                    if not data:
                        break
                    lo += len(data)
                    yield data

        return await asyncio.to_thread(self._store_part, key, upload_id, part_number, chunks)

    def _parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        folder, _ = self._meta(key, upload_id)
        parts: builtins.list[PartInfo] = []
        for number, paths in sorted(self._part_files(folder).items()):
            path = max(paths, key=lambda p: p.stat().st_mtime_ns)
            parts.append(PartInfo(part_number=number, etag=path.name[11:], size=path.stat().st_size))
        return parts

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        return await asyncio.to_thread(self._parts, key, upload_id)

    def _complete(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> str:
        check_parts(parts)
        folder, _ = self._meta(key, upload_id)
        stored = {p.part_number: p for p in self._parts(key, upload_id)}
        for p in parts:
            have = stored.get(p.part_number)
            if have is None or have.etag != p.etag.strip('"'):
                raise StorageError(f"part {p.part_number} of {upload_id} is missing or has another ETag")
            if have.size != p.size:
                raise StorageError(f"part {p.part_number} of {upload_id} has {have.size} bytes, not {p.size}")

        def join(out) -> None:  # type: ignore[no-untyped-def]
            for p in parts:
                with open(folder / f"part-{p.part_number:05d}-{stored[p.part_number].etag}", "rb") as src:
                    shutil.copyfileobj(src, out, _COPY_CHUNK)

        etag = self._write_atomic(self._path(key), join)
        shutil.rmtree(folder, ignore_errors=True)
        return etag

    async def complete_multipart(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> str:
        return await asyncio.to_thread(self._complete, key, upload_id, parts)

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            folder, _ = self._meta(key, upload_id)
        except UploadNotFound:
            return
        shutil.rmtree(folder, ignore_errors=True)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await asyncio.to_thread(self._abort, key, upload_id)

    def _uploads(self, prefix: str) -> builtins.list[MultipartUpload]:
        check_prefix(prefix)
        found = []
        for folder in self._mp_root.glob("*") if self._mp_root.is_dir() else []:
            try:
                meta = msgspec.json.decode((folder / "upload.json").read_bytes(), type=_UploadMeta)
            except (OSError, msgspec.DecodeError):
                continue
            if meta.key.startswith(prefix):
                found.append(MultipartUpload(key=meta.key, upload_id=folder.name, initiated=meta.initiated))
        found.sort(key=lambda u: (u.key, u.initiated))
        return found

    async def list_multipart_uploads(self, prefix: str = "") -> AsyncIterator[MultipartUpload]:
        for upload in await asyncio.to_thread(self._uploads, prefix):
            yield upload

    async def close(self) -> None:
        return None
