"""tus bytes straight into the object store (``storage.backend: s3``), the way tusd's s3store does it.

An upload is one S3 multipart upload of its final source object (``layout.source_key``), opened at
creation. PATCH bodies are cut into ``storage.s3.part_size`` parts (S3 refuses parts under 5 MiB
but the last); the short remainder is kept apart as its own object, ``uploads/<id>/tail``, and put
in front of the next PATCH's bytes; on completion it goes up as the last part and the multipart is
completed. The state (edge/intake/state.py: offset, multipart id, parts with ETags, tail size) is
in Redis, so any edge continues any upload, and a kill -9 loses nothing acknowledged.

Durability rule, as on disk: an offset is saved (and so acknowledged) only once the bytes under it
are in the store: ``offset == sum(part sizes) + tail_size``. A part or tail stored but not yet
recorded when an edge dies is simply written again (a part number uploaded again replaces it; only
the first ``tail_size`` bytes of the tail object are ever read).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from aiohttp import ClientPayloadError, web

from streamgate.common import layout
from streamgate.common.config import Config
from streamgate.common.storage import ObjectNotFound, ObjectStore, PartInfo, StorageUnavailable
from streamgate.edge import stores
from streamgate.edge.errors import HTTPError
from streamgate.edge.intake.limits import ByteMeter, room_for
from streamgate.edge.intake.state import StoredPart, Upload, UploadLocked
from streamgate.edge.keys import CONFIG
from streamgate.edge.objects import OBJECT_STORE

log = logging.getLogger("streamgate.edge.intake.s3_upload")

# A checksummed body is verified before any of it is stored: it waits in memory up to this much,
# then in a scratch file under data_dir/uploads (per-host scratch, never shared).
_SPOOL_MEMORY = 8 * 2**20
_READ = 1 << 20
# Parts of one PATCH in flight at once: the body keeps arriving while earlier parts go up (one at a
# time the client would idle for every part's round trip). Bounds memory to this many parts.
PARTS_IN_FLIGHT = 4


def upload_prefix(upload_id: str) -> str:
    return f"{layout.UPLOADS}/{upload_id}/"


def tail_key(upload_id: str) -> str:
    return f"{layout.UPLOADS}/{upload_id}/tail"


def partial_key(upload_id: str) -> str:
    """A partial upload's bytes (tus concatenation, edge/intake/concat.py): never a source."""
    return f"{layout.UPLOADS}/{upload_id}/data"


async def open_upload(objects: ObjectStore, upload: Upload, extension: str) -> Upload:
    """Creation: the multipart upload first, so the state never names one that is not there."""
    key = partial_key(upload.id) if upload.partial else layout.source_key(upload.id, extension)
    multipart_id = await objects.create_multipart(key)
    return msgspec.structs.replace(upload, source_key=key, multipart_id=multipart_id)


class _Writer:
    """Bytes past the last stored part (the stored tail, then the body) cut into parts as they fill."""

    def __init__(self, app: web.Application, config: Config, upload: Upload) -> None:
        self.objects: ObjectStore = app[OBJECT_STORE]
        self.state = app[stores.UPLOAD_STORE]
        self.config = config
        self.upload = upload
        self.part_size = int(config.storage.s3.part_size)
        self.buffer = bytearray()
        # Parts sent, in part-number order. Each is recorded (acknowledged) as soon as it and every
        # part before it are stored, so the saved offset always covers a contiguous run of bytes.
        self.in_flight: collections.deque[asyncio.Task[None]] = collections.deque()
        self.next_number = len(upload.parts) + 1

    async def start(self) -> None:
        if self.upload.tail_size:
            self.buffer += await self.objects.get(tail_key(self.upload.id), 0, self.upload.tail_size)
            if len(self.buffer) != self.upload.tail_size:
                raise StorageUnavailable(f"upload {self.upload.id}: the stored tail is short", retry_after=5)

    async def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        while len(self.buffer) >= self.part_size:
            self._send(bytes(self.buffer[:self.part_size]))
            del self.buffer[:self.part_size]
            if len(self.in_flight) >= PARTS_IN_FLIGHT:
                await self.in_flight.popleft()

    async def finish(self) -> None:
        """Record the parts in flight, then store what is buffered: the last part when the upload
        is whole, else the tail."""
        while self.in_flight:
            await self.in_flight.popleft()
        stored = sum(p.size for p in self.upload.parts)
        if stored + len(self.buffer) == self.upload.length and self.buffer:
            self._send(bytes(self.buffer))
            self.buffer.clear()
            await self.in_flight.popleft()
        elif len(self.buffer) > self.upload.tail_size:
            await self.objects.put(tail_key(self.upload.id), bytes(self.buffer))
            await self._save(tail_size=len(self.buffer))

    async def abandon(self) -> None:
        """An error: parts still in flight are not recorded (the next PATCH sends them again)."""
        for task in self.in_flight:
            task.cancel()
        await asyncio.gather(*self.in_flight, return_exceptions=True)
        self.in_flight.clear()

    def _send(self, data: bytes) -> None:
        number = self.next_number
        self.next_number += 1
        previous = self.in_flight[-1] if self.in_flight else None
        self.in_flight.append(asyncio.create_task(
            self._store_part(number, data, previous), name=f"upload-{self.upload.id}-part-{number}"))

    async def _store_part(self, number: int, data: bytes, previous: asyncio.Task[None] | None) -> None:
        info = await self.objects.upload_part(self.upload.source_key, self.upload.multipart_id, number, data)
        if previous is not None:
            await previous  # recorded in order (its failure fails this one: nothing past a gap)
        parts = [*self.upload.parts, StoredPart(number=number, etag=info.etag, size=len(data))]
        await self._save(parts=parts, tail_size=0)

    async def _save(self, **changes: Any) -> None:
        upload = msgspec.structs.replace(self.upload, **changes)
        offset = sum(p.size for p in upload.parts) + upload.tail_size
        self.upload = msgspec.structs.replace(
            upload, offset=offset, expires_at=time.time() + float(self.config.uploads.expiration))
        await self.state.save(self.upload)


async def _spooled(request: web.Request, config: Config, room: int, hasher: Any, digest: bytes,
                   error: Callable[..., HTTPError], base: int, meter: ByteMeter) -> AsyncIterator[bytes]:
    """A checksummed body: read whole and verified first (460 stores nothing), then replayed."""
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY, dir=str(config.storage.uploads_dir))
    try:
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > room:
                raise error(413, "payload too large", "the body runs past Upload-Length")
            await meter.charge(len(chunk))
            hasher.update(chunk)
            await asyncio.to_thread(spool.write, chunk)
        if hasher.digest() != digest:
            raise error(460, "checksum mismatch",
                        f"the body does not match Upload-Checksum; the offset stays {base}")
        await asyncio.to_thread(spool.seek, 0)
        while chunk := await asyncio.to_thread(spool.read, _READ):
            yield chunk
    finally:
        spool.close()


async def receive(request: web.Request, config: Config, upload: Upload,
                  checksum: tuple[Any, bytes] | None, error: Callable[..., HTTPError]) -> Upload:
    """Append the body at ``upload.offset`` into the multipart upload; returns the saved state.

    Raises StorageUnavailable (the caller answers 503) with whatever was stored before saved.
    """
    base = upload.offset
    room = room_for(config, upload)
    if request.content_length is not None and request.content_length > room:
        raise error(413, "payload too large",
                    f"{request.content_length} bytes at offset {base} exceed Upload-Length {upload.length}")
    writer = _Writer(request.app, config, upload)
    await writer.start()
    meter = ByteMeter(request, upload.owner)
    received = 0
    try:
        if checksum is not None:
            async for chunk in _spooled(request, config, room, checksum[0](), checksum[1], error, base, meter):
                await writer.feed(chunk)
        else:
            async for chunk in request.content.iter_any():
                received += len(chunk)
                if received > room:
                    raise error(413, "payload too large", f"the body runs past Upload-Length {upload.length}")
                await meter.charge(len(chunk))
                await writer.feed(chunk)
        await writer.finish()
    except (ClientPayloadError, ConnectionError) as exc:
        log.info("upload %s: body interrupted at %d bytes: %s", upload.id, writer.upload.offset, exc)
        if checksum is None:
            try:
                await writer.finish()  # keep what arrived whole: it goes to the tail
            finally:
                await writer.abandon()
        raise web.HTTPBadRequest(text="body interrupted") from None
    except asyncio.CancelledError:
        if checksum is None:
            with contextlib.suppress(Exception):
                await writer.finish()
        await writer.abandon()
        raise
    except BaseException:
        await writer.abandon()
        raise
    return writer.upload


async def _sha256(objects: ObjectStore, key: str) -> str:
    digest = hashlib.sha256()
    async with await objects.open_read(key, chunk_size=_READ) as stream:
        async for chunk in stream:
            digest.update(chunk)
    return digest.hexdigest()


async def complete(objects: ObjectStore, upload: Upload) -> str | None:
    """Complete the multipart upload (idempotent: a completion cut short is checked by HEAD);
    returns the source's sha256, or None when its bytes were lost."""
    parts = [PartInfo(part_number=p.number, etag=p.etag, size=p.size) for p in upload.parts]
    if not parts and not upload.tail_size:  # an empty upload: S3 has no zero-part multipart
        await objects.put(upload.source_key, b"")
        await objects.abort_multipart(upload.source_key, upload.multipart_id)
    else:
        try:
            if upload.tail_size:
                # A deferred length set by a PATCH with no body: the stored tail is the last part.
                tail = await objects.get(tail_key(upload.id), 0, upload.tail_size)
                parts.append(await objects.upload_part(upload.source_key, upload.multipart_id,
                                                       len(parts) + 1, tail))
            await objects.complete_multipart(upload.source_key, upload.multipart_id, parts)
        except ObjectNotFound:  # the multipart upload (UploadNotFound) or the tail
            # Completed by an edge that died before saving `done`, or lost (aborted as stale).
            info = await objects.head(upload.source_key)
            if info is None or info.size != upload.length:
                return None
    if upload.partial:  # its data object stays under the prefix until the final upload is done
        await objects.delete(tail_key(upload.id))
        return ""
    await objects.delete_prefix(upload_prefix(upload.id))
    return await _sha256(objects, upload.source_key)


async def discard(objects: ObjectStore, upload: Upload) -> None:
    """Termination or expiry: the multipart upload (if unfinished) and the tail."""
    if not upload.done and upload.multipart_id:
        await objects.abort_multipart(upload.source_key, upload.multipart_id)
    await objects.delete_prefix(upload_prefix(upload.id))


async def delete_video(objects: ObjectStore, video_id: str, upload: Upload | None) -> None:
    """DELETE of a video in s3 mode: its upload (multipart, tail), its source and its media."""
    if upload is not None and upload.source_key:
        await discard(objects, upload)
    for prefix in (f"{layout.SOURCES}/{video_id}/", f"{layout.media_prefix(video_id)}/"):
        await objects.delete_prefix(prefix)


async def abort_stale(app: web.Application, now: float) -> int:
    """Abort multipart uploads of sources older than uploads.expiration that no live upload owns
    (one whose state was lost, or an edge killed between opening it and saving the state)."""
    objects: ObjectStore = app[OBJECT_STORE]
    state = app[stores.UPLOAD_STORE]
    cutoff = now - float(app[CONFIG].uploads.expiration)
    stale = [m for prefix in (f"{layout.SOURCES}/", f"{layout.UPLOADS}/")  # sources, partial uploads
             async for m in objects.list_multipart_uploads(prefix) if m.initiated < cutoff]
    aborted = 0
    for multipart in stale:
        parts = multipart.key.split("/")
        upload_id = parts[1] if len(parts) > 2 else ""
        with contextlib.suppress(UploadLocked):
            async with state.lock(upload_id or multipart.upload_id, 0):
                upload = await state.get(upload_id) if upload_id else None
                if (upload is not None and not upload.done and upload.multipart_id == multipart.upload_id
                        and upload.expires_at > now):
                    continue  # still being written: its expiry is counted from its last PATCH
                await objects.abort_multipart(multipart.key, multipart.upload_id)
                aborted += 1
                log.info("aborted stale multipart upload %s of %s", multipart.upload_id, multipart.key)
    return aborted
