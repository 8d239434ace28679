"""tus concatenation (https://tus.io/protocols/resumable-upload#concatenation): one file sent as
several partial uploads in parallel, then joined by a final upload (tus-js-client's
``parallelUploads``, Uppy, ``streamgate upload --parallel N``).

A partial upload is an upload like any other (PATCHes, checksums, resumption) that never becomes a
video: no catalog row, no job. Its bytes stay where they arrived: ``uploads/<id>.part`` on disk,
the object ``uploads/<id>/data`` in the store (its own multipart upload, completed when whole).

The final upload (``Upload-Concat: final;<url> <url> ...``) is refused unless every partial is whole
and the caller's. It is created whole (offset == length == the partials' sum, since their bytes
are durable already) and its completion assembles them into its source, then becomes the video
like any other. The assembly is idempotent: an edge killed in the middle leaves the final pending
and the resubmitter (completion.resubmit_once) completes it; the partials are removed only after
the final is done.

* disk: the first partial's file becomes the final's partial file (renamed: its bytes are not
  copied), the others are appended and everything hashed (sha256) in the same pass, fsynced,
  then moved into place as any upload.
* s3: a multipart upload to the source whose parts are ``upload_part_copy`` of the partial
  objects, server side: no byte passes through the edge. S3 refuses parts under 5 MiB but the
  last, so when a partial other than the last is smaller than that (small files sent in many
  parts) the bytes are streamed through the edge instead (small, by definition), rather than
  refusing an upload an honest client made.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
from aiohttp import web

from streamgate.common import writeback
from streamgate.common.config import Config
from streamgate.common.storage import ObjectStore, UploadNotFound
from streamgate.edge import stores
from streamgate.edge.intake import s3_upload, source_hash
from streamgate.edge.intake.paths import partial_path
from streamgate.edge.intake.state import StoredPart, Upload
from streamgate.edge.keys import CONFIG
from streamgate.edge.objects import OBJECT_STORE

# S3's smallest part but the last, and its largest part (a copy may not exceed it).
S3_MIN_PART = 5 * 2**20
S3_MAX_PART = 5 * 2**30
_COPY_CHUNK = 8 * 2**20
_ID = re.compile(r"/api/v1/uploads/([0-9a-f]{32})/?\Z")


class ConcatError(ValueError):
    """The Upload-Concat header or the partials it names are not acceptable (400/403/404...)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def parse(header: str) -> tuple[str, list[str]]:
    """``partial`` -> ("partial", []); ``final;<url> <url>`` -> ("final", [upload ids])."""
    value = header.strip()
    if value == "partial":
        return "partial", []
    kind, _, urls = value.partition(";")
    if kind.strip() != "final" or not urls.strip():
        raise ConcatError(400, "Upload-Concat must be 'partial' or 'final;<url> <url> ...'")
    ids = []
    for url in urls.split():
        match = _ID.search(url.split("?", 1)[0])
        if match is None:
            raise ConcatError(400, f"Upload-Concat: {url!r} is not an upload of this server")
        ids.append(match.group(1))
    if len(set(ids)) != len(ids):
        raise ConcatError(400, "Upload-Concat names a partial upload twice")
    return "final", ids


async def partials_of(app: web.Application, ids: list[str], owner: str) -> list[Upload]:
    """The partial uploads a final one is made of, each whole and the caller's."""
    store = app[stores.UPLOAD_STORE]
    found = []
    for upload_id in ids:
        upload = await store.get(upload_id)
        if upload is None:
            raise ConcatError(410 if await store.is_gone(upload_id) else 404,
                              f"partial upload {upload_id} does not exist (terminated, expired or never made)")
        if upload.owner and upload.owner != owner:
            raise ConcatError(403, f"partial upload {upload_id} belongs to another wallet")
        if not upload.partial:
            raise ConcatError(400, f"upload {upload_id} is not a partial upload (Upload-Concat: partial)")
        if not upload.done:
            raise ConcatError(400, f"partial upload {upload_id} is not complete "
                                   f"({upload.offset} of {max(upload.length, 0)} bytes)")
        found.append(upload)
    return found


async def finish_partial(app: web.Application, upload: Upload) -> Upload:
    """A partial upload whose bytes are all in: durable where they are; in the store its
    multipart upload is completed into its data object."""
    if upload.source_key:
        await s3_upload.complete(app[OBJECT_STORE], upload)
    upload = msgspec.structs.replace(upload, done=True)
    await app[stores.UPLOAD_STORE].save(upload)
    return upload


async def assemble(app: web.Application, upload: Upload) -> Upload:
    """Join the final upload's partials into its bytes (idempotent); returns the upload ready for
    the ordinary completion."""
    store = app[stores.UPLOAD_STORE]
    partials = []
    for upload_id in upload.concat:
        partial = await store.get(upload_id)
        if partial is None:
            raise FileNotFoundError(f"partial upload {upload_id} of {upload.id} is gone")
        partials.append(partial)
    if not upload.source_key:
        config: Config = app[CONFIG]
        sources = [(partial_path(config, p.id), max(p.length, 0)) for p in partials]
        digest = await asyncio.to_thread(_join_files, sources, partial_path(config, upload.id))
        if (hashes := source_hash.of(app)) is not None:
            hashes.keep(upload.id, upload.length, digest)
        return upload
    if upload.parts:  # copied and recorded before: completion takes it from here
        return upload
    objects: ObjectStore = app[OBJECT_STORE]
    sizes = [p.length for p in partials if p.length > 0]
    nonempty = [p for p in partials if p.length > 0]
    try:
        if all(size >= S3_MIN_PART for size in sizes[:-1]):
            parts = await _copy_parts(objects, upload, nonempty)
        else:
            parts = await _stream_parts(objects, upload, nonempty, int(app[CONFIG].storage.s3.part_size))
    except UploadNotFound:
        # Completed by an edge that died before saving: completion checks the object by HEAD.
        return upload
    upload = msgspec.structs.replace(upload, parts=parts, tail_size=0)
    await store.save(upload)
    return upload


async def release(app: web.Application, upload: Upload) -> None:
    """After the final upload is done: its partials are removed (410 from then on)."""
    from streamgate.edge.intake import completion

    store = app[stores.UPLOAD_STORE]
    for upload_id in upload.concat:
        partial = await store.get(upload_id)
        if partial is not None:
            await completion.discard_upload(app, partial)


def _join_files(sources: list[tuple[Any, int]], target: Any) -> Any:
    """The partial files (path, length), in order, joined into ``target``, fsynced; returns the
    sha256 of the result, computed in the same pass (completion need not read it again).

    The first partial's bytes are not copied: its file is renamed to ``target`` and the others
    appended (its blocks are durable already, so the fsync only writes what was appended). A
    join cut short by a crash finds the first partial renamed already and redoes the rest: the
    record keeps each partial's length, so the file is cut back to the first one's. The first
    partial can then make no other final upload (tus allows a server to use a partial once).
    """
    digest = hashlib.sha256()
    first, first_length = sources[0]
    try:
        os.replace(first, target)
    except FileNotFoundError:
        if not os.path.exists(target):  # neither renamed before nor there: lost
            raise
    fd = os.open(target, os.O_RDWR)
    try:
        if os.fstat(fd).st_size < first_length:
            raise OSError(f"{target}: shorter than its first partial's {first_length} bytes")
        os.ftruncate(fd, first_length)
        source_hash.hash_fd_range(fd, 0, first_length, digest)
        offset = first_length
        for source, length in sources[1:]:
            with open(source, "rb", buffering=0) as f:
                if os.fstat(f.fileno()).st_size < length:
                    raise OSError(f"{source}: shorter than its upload's {length} bytes")
                _copy_hashed(f.fileno(), fd, length, offset, digest)
            offset += length
        os.fsync(fd)
    finally:
        os.close(fd)
    return digest


def _copy_hashed(src: int, dst: int, length: int, at: int, digest: Any) -> None:
    """``length`` bytes of ``src`` appended at ``at`` of ``dst``, hashed on the way: the hash of
    one block runs in a second thread while the block is written (both release the GIL)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="join-hash") as hashing:
        pending = None
        done = 0
        while done < length:
            block = os.pread(src, min(_COPY_CHUNK, length - done), done)
            if not block:
                raise OSError(f"short read at {done} of {length}")
            if pending is not None:
                pending.result()
            pending = hashing.submit(digest.update, block)
            view = memoryview(block)
            pos = at + done
            while view:
                n = os.pwrite(dst, view, pos)
                view, pos = view[n:], pos + n
            writeback.start(dst, at + done, len(block))  # the disk works while the next block copies
            done += len(block)
        if pending is not None:
            pending.result()


async def _copy_parts(objects: ObjectStore, upload: Upload, partials: list[Upload]) -> list[StoredPart]:
    """Server-side copies, a few at a time: one part per partial (per 5 GiB of one)."""
    jobs: list[tuple[int, str, int, int]] = []
    for partial in partials:
        for start in range(0, partial.length, S3_MAX_PART):
            jobs.append((len(jobs) + 1, partial.source_key, start, min(partial.length, start + S3_MAX_PART)))
    limit = asyncio.Semaphore(s3_upload.PARTS_IN_FLIGHT)

    async def copy(number: int, key: str, start: int, end: int) -> StoredPart:
        async with limit:
            info = await objects.upload_part_copy(upload.source_key, upload.multipart_id, number, key, start, end)
        return StoredPart(number=number, etag=info.etag, size=info.size)

    return list(await asyncio.gather(*(copy(*job) for job in jobs)))


async def _stream_parts(objects: ObjectStore, upload: Upload, partials: list[Upload],
                        part_size: int) -> list[StoredPart]:
    """Through the edge, re-cut into whole parts: for partials too small to be parts of their own."""
    parts: list[StoredPart] = []
    buffer = bytearray()

    async def send(data: bytes) -> None:
        number = len(parts) + 1
        info = await objects.upload_part(upload.source_key, upload.multipart_id, number, data)
        parts.append(StoredPart(number=number, etag=info.etag, size=len(data)))

    for partial in partials:
        stream = await objects.open_read(partial.source_key, chunk_size=1 << 20)
        async with stream:
            async for chunk in stream:
                buffer += chunk
                while len(buffer) >= part_size:
                    await send(bytes(buffer[:part_size]))
                    del buffer[:part_size]
    if buffer:
        await send(bytes(buffer))
    return parts


def concat_header(upload: Upload, location: Any) -> str:
    """The Upload-Concat a HEAD reports: ``partial``, or ``final;`` and the partials' URLs."""
    if upload.partial:
        return "partial"
    return "final;" + " ".join(location(upload_id) for upload_id in upload.concat)
