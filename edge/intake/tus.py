"""tus 1.0.0 uploads at ``/api/v1/uploads``: core, creation, creation-with-upload,
creation-defer-length, termination, checksum (sha1, md5, sha256), expiration and concatenation
(edge/intake/concat.py) (https://tus.io/protocols/resumable-upload).

Durability rule: bytes are fsynced before the offset that covers them is saved, and the saved
offset is the only one ever reported; a PATCH that stops mid-body keeps what was checkpointed.
The video id is the upload id, so ``/api/v1/videos/{id}`` exists from the creation on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import msgspec
from aiohttp import ClientPayloadError, web

from streamgate.common.config import Config
from streamgate.common.storage import StorageUnavailable
from streamgate.edge import stores
from streamgate.edge.access.auth import require_writer
from streamgate.edge.access.origin import public_base
from streamgate.edge.access.ratelimit import enforce
from streamgate.edge.catalog import Video
from streamgate.edge.errors import HTTPError
from streamgate.edge.intake import completion as intake
from streamgate.edge.intake import concat, s3_upload, source_hash
from streamgate.edge.intake.body_sink import BodySink
from streamgate.edge.intake.limits import ByteMeter, room_for
from streamgate.edge.intake.metadata import metadata_text, parse_metadata, video_fields
from streamgate.edge.intake.paths import partial_path, source_extension
from streamgate.edge.intake.space import require_room
from streamgate.edge.intake.state import UNKNOWN_LENGTH, Upload, UploadLocked
from streamgate.edge.keys import CONFIG
from streamgate.edge.objects import OBJECT_STORE, uses_store

log = logging.getLogger("streamgate.edge.intake.tus")

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = ("creation,creation-with-upload,creation-defer-length,termination,checksum,expiration,"
                  "concatenation")
CHECKSUMS = {"sha1": hashlib.sha1, "md5": hashlib.md5, "sha256": hashlib.sha256}
OFFSET_TYPE = "application/offset+octet-stream"
# A checkpoint (fsync + saved offset) every this many bytes bounds what a kill -9 can cost.
CHECKPOINT_BYTES = 4 * 2**20
_EXPOSE = ("Location, Upload-Offset, Upload-Length, Upload-Metadata, Upload-Expires, Tus-Resumable, "
           "Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm, Upload-Defer-Length, Upload-Concat")
_ALLOW_HEADERS = ("Authorization, Content-Type, Upload-Offset, Upload-Length, Upload-Metadata, "
                  "Upload-Checksum, Upload-Defer-Length, Upload-Concat, Tus-Resumable, X-HTTP-Method-Override")
_DIGITS = re.compile(r"\A[0-9]{1,19}\Z")


def _headers(config: Config, **extra: str) -> dict[str, str]:
    return {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store",
            "Access-Control-Allow-Origin": config.edge.cors_allow_origin,
            "Access-Control-Expose-Headers": _EXPOSE, **extra}


def _error(config: Config, status: int, error: str, detail: str, **extra: str) -> HTTPError:
    return HTTPError(status, error, detail, _headers(config, **extra))


def _http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)  # tus 1.0 expiration: RFC 7231 datetime


def _check_resumable(request: web.Request, config: Config) -> None:
    if request.headers.get("Tus-Resumable") != TUS_VERSION:
        raise _error(config, 412, "precondition failed",
                     f"Tus-Resumable must be {TUS_VERSION}", **{"Tus-Version": TUS_VERSION})


def _int_header(request: web.Request, config: Config, name: str) -> int:
    raw = request.headers.get(name)
    if raw is None or not _DIGITS.match(raw.strip()):
        raise _error(config, 400, "bad request", f"{name} must be a non-negative integer")
    return int(raw)


def _checksum(request: web.Request, config: Config) -> tuple[Any, bytes] | None:
    raw = request.headers.get("Upload-Checksum")
    if raw is None:
        return None
    algorithm, _, digest = raw.strip().partition(" ")
    if algorithm not in CHECKSUMS:
        raise _error(config, 400, "bad request",
                     f"checksum algorithm {algorithm!r} not supported (sha1, md5, sha256)")
    try:
        return CHECKSUMS[algorithm], base64.b64decode(digest.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise _error(config, 400, "bad request", "Upload-Checksum digest is not Base64") from None


def _check_body_type(request: web.Request, config: Config) -> None:
    if request.content_type != OFFSET_TYPE:
        raise _error(config, 415, "unsupported media type", f"Content-Type must be {OFFSET_TYPE}")


def _location(request: web.Request, config: Config, upload_id: str) -> str:
    return f"{public_base(config)}/api/v1/uploads/{upload_id}"  # never the request's Host


async def _load(request: web.Request, config: Config, upload_id: str, owner: str) -> Upload:
    upload = await request.app[stores.UPLOAD_STORE].get(upload_id)
    if upload is None:
        if await request.app[stores.UPLOAD_STORE].is_gone(upload_id):
            raise _error(config, 410, "gone", "the upload was terminated or expired")
        raise _error(config, 404, "not found", "no such upload")
    if upload.owner and upload.owner != owner:
        if not owner:
            raise _error(config, 401, "unauthorized", "this upload belongs to a wallet: sign in",
                         **{"WWW-Authenticate": "Bearer"})
        raise _error(config, 403, "forbidden", "this upload belongs to another wallet")
    if not upload.done and upload.expires_at <= time.time():
        raise _error(config, 410, "gone", "the upload expired")
    return upload


def _unavailable(config: Config, exc: StorageUnavailable, offset: int | None = None) -> HTTPError:
    # The store is down or slow: nothing unacknowledged was reported, so the client resumes later.
    extra = {"Retry-After": str(exc.retry_after)}
    if offset is not None:
        extra["Upload-Offset"] = str(offset)
    return _error(config, 503, "service unavailable",
                  f"the object store is unavailable ({exc}); resume later", **extra)


async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The body as the socket delivered it: ``iter_any`` would join what is buffered into one
    bytes (a copy of every byte on the event loop); the sink takes the pieces as they are."""
    while True:
        chunk, end_of_http_chunk = await request.content.readchunk()
        if chunk:
            yield chunk
        elif not end_of_http_chunk:
            return


async def receive(request: web.Request, config: Config, upload: Upload,
                  checksum: tuple[Any, bytes] | None) -> Upload:
    """Append the request body at ``upload.offset``; returns the upload with its durable offset.

    With a checksum, nothing is kept unless the whole body arrived and matches (460 otherwise,
    the offset unchanged). Without one, what arrived before an interruption is kept.
    The loop only receives: writing, hashing and flushing run in a thread (edge/intake/body_sink.py).
    """
    store = request.app[stores.UPLOAD_STORE]
    base = upload.offset
    room = room_for(config, upload)
    meter = ByteMeter(request, upload.owner)
    if request.content_length is not None and request.content_length > room:
        raise _error(config, 413, "payload too large",
                     f"{request.content_length} bytes at offset {base} exceed Upload-Length {upload.length}")
    hasher = checksum[0]() if checksum else None
    path = partial_path(config, upload.id)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    sink = BodySink(fd, base, [hasher] if hasher is not None else [])
    received = 0
    durable = base

    async def checkpoint() -> None:
        nonlocal upload, durable
        await sink.drain()
        if sink.written == durable:
            return
        await sink.sync()
        upload = msgspec.structs.replace(upload, offset=sink.written,
                                         expires_at=time.time() + float(config.uploads.expiration))
        await store.save(upload)
        durable = sink.written

    async def cut(at: int) -> None:
        await sink.settle()
        os.ftruncate(fd, at)

    try:
        # Bytes past the acknowledged offset were never reported: cut them before writing.
        os.ftruncate(fd, base)
        try:
            async for chunk in _body_chunks(request):
                if received + len(chunk) > room:
                    raise _error(config, 413, "payload too large",
                                 f"the body runs past Upload-Length {upload.length}")
                try:
                    await meter.charge(len(chunk))
                except HTTPError as exc:  # over the byte cap: keep what arrived, say where it stands
                    if hasher is None:
                        await checkpoint()
                    exc.headers.update(_headers(config, **{"Upload-Offset": str(upload.offset)}))
                    raise
                received += len(chunk)
                await sink.feed(chunk)
                if hasher is None and base + received - durable >= CHECKPOINT_BYTES:
                    await checkpoint()
            await sink.drain()
        except (ClientPayloadError, ConnectionError) as exc:
            # The client went away mid-body: keep what is whole, report nothing (no one listens).
            log.info("upload %s: body interrupted at %d bytes: %s", upload.id, base + received, exc)
            if hasher is None:
                await checkpoint()
            else:
                await cut(base)
            raise web.HTTPBadRequest(text="body interrupted") from None
        except HTTPError:
            await cut(durable)
            raise
        except OSError as exc:  # the disk is full or failing: keep what is durable, say so
            await cut(durable)
            log.error("upload %s: write failed at %d: %s", upload.id, base + received, exc)
            raise _error(config, 507, "insufficient storage",
                         f"the edge could not store the upload ({exc.strerror}); resume later",
                         **{"Upload-Offset": str(durable)}) from None
        except asyncio.CancelledError:
            if hasher is None:
                await checkpoint()
            raise
        if hasher is not None and checksum is not None and hasher.digest() != checksum[1]:
            await cut(base)
            raise _error(config, 460, "checksum mismatch",
                         f"the body does not match Upload-Checksum; the offset stays {base}")
        try:
            await checkpoint()
        except OSError as exc:  # the last flush failed: nothing past the durable offset is reported
            await cut(durable)
            raise _error(config, 507, "insufficient storage",
                         f"the edge could not store the upload ({exc.strerror}); resume later",
                         **{"Upload-Offset": str(durable)}) from None
    finally:
        # No thread may still write to the descriptor (or the upload, once its lock is released).
        await sink.settle()
        os.close(fd)
        hashes = source_hash.of(request.app)
        if hashes is not None and not upload.partial and upload.offset > base:
            # The source's sha256, from the bytes just acknowledged (a partial is never a source).
            hashes.advance(upload.id, path, base, upload.offset)
    return upload


def _progress_headers(config: Config, upload: Upload) -> dict[str, str]:
    headers = _headers(config, **{"Upload-Offset": str(upload.offset)})
    if not upload.done:
        headers["Upload-Expires"] = _http_date(upload.expires_at)
    return headers


async def _receive_locked(request: web.Request, config: Config, upload_id: str, owner: str,
                          offset: int | None, checksum: tuple[Any, bytes] | None,
                          length: int | None = None) -> Upload:
    """Under the upload's lock: check the offset, set a deferred length, write the body,
    complete when whole."""
    try:
        async with request.app[stores.UPLOAD_STORE].lock(upload_id, float(config.uploads.lock_wait)):
            upload = await _load(request, config, upload_id, owner)  # fresh, under the lock
            if offset is not None and offset != upload.offset:
                raise _error(config, 409, "conflict",
                             f"Upload-Offset {offset} does not match the upload's offset {upload.offset}",
                             **{"Upload-Offset": str(upload.offset)})
            if upload.concat and offset is not None:
                raise _error(config, 403, "forbidden", "a final upload (Upload-Concat: final) takes no PATCH")
            if length is not None and length != upload.length:
                upload = await _set_length(request, config, upload, length)
            try:
                if upload.length == UNKNOWN_LENGTH or upload.offset < upload.length:
                    if upload.source_key:
                        upload = await s3_upload.receive(request, config, upload, checksum,
                                                         lambda *a, **kw: _error(config, *a, **kw))
                    else:
                        upload = await receive(request, config, upload, checksum)
                elif request.content_length:
                    raise _error(config, 413, "payload too large", "the upload is already complete")
                if upload.offset == upload.length and not upload.done:
                    upload = await intake.complete_upload(request.app, upload)
            except StorageUnavailable as exc:
                saved = await request.app[stores.UPLOAD_STORE].get(upload_id)
                raise _unavailable(config, exc, saved.offset if saved else None) from None
            return upload
    except UploadLocked:
        raise _error(config, 423, "locked", "another request is writing this upload; retry",
                     **{"Retry-After": "1"}) from None


async def _set_length(request: web.Request, config: Config, upload: Upload, length: int) -> Upload:
    """creation-defer-length: a PATCH's Upload-Length fixes the length, once."""
    if upload.length != UNKNOWN_LENGTH:
        raise _error(config, 400, "bad request",
                     f"Upload-Length {length} differs from the upload's length {upload.length}")
    if length < upload.offset:
        raise _error(config, 400, "bad request",
                     f"Upload-Length {length} is below the upload's offset {upload.offset}")
    _check_size(config, length)
    pending = request.content_length
    if pending is not None and upload.offset + pending > length:
        raise _error(config, 413, "payload too large",
                     f"{pending} bytes at offset {upload.offset} exceed Upload-Length {length}")
    upload = msgspec.structs.replace(upload, length=length)
    await request.app[stores.UPLOAD_STORE].save(upload)
    return upload


def _check_size(config: Config, length: int) -> None:
    if length > config.uploads.max_size:
        raise _error(config, 413, "payload too large",
                     f"Upload-Length {length} exceeds Tus-Max-Size {int(config.uploads.max_size)}",
                     **{"Tus-Max-Size": str(int(config.uploads.max_size))})


def _creation_length(request: web.Request, config: Config) -> int:
    """Upload-Length, or UNKNOWN_LENGTH with ``Upload-Defer-Length: 1`` (creation-defer-length)."""
    deferred = request.headers.get("Upload-Defer-Length")
    if deferred is not None:
        if deferred.strip() != "1":
            raise _error(config, 400, "bad request", "Upload-Defer-Length must be 1")
        if "Upload-Length" in request.headers:
            raise _error(config, 400, "bad request", "send Upload-Length or Upload-Defer-Length, not both")
        return UNKNOWN_LENGTH
    length = _int_header(request, config, "Upload-Length")
    _check_size(config, length)
    return length


async def _open_in_store(request: web.Request, config: Config, upload: Upload) -> Upload:
    """The upload's multipart object in the store (storage.backend: s3), before any record names it."""
    extension = source_extension(metadata_text(upload.metadata, "filename"))
    try:
        return await s3_upload.open_upload(request.app[OBJECT_STORE], upload, extension)
    except StorageUnavailable as exc:
        raise _unavailable(config, exc) from None


async def create(request: web.Request) -> web.Response:
    config: Config = request.app[CONFIG]
    _check_resumable(request, config)
    owner = require_writer(request)
    await enforce(request, "upload", owner)  # a creation: the one request an upload is counted by
    raw_concat = request.headers.get("Upload-Concat")
    try:
        kind, partial_ids = ("", []) if raw_concat is None else concat.parse(raw_concat)
    except concat.ConcatError as exc:
        raise _error(config, exc.status, "bad request", str(exc)) from None
    if kind == "final":
        return await _create_final(request, config, owner, partial_ids)
    length = _creation_length(request, config)
    require_room(config, length)
    try:
        metadata = parse_metadata(request.headers.get("Upload-Metadata", ""))
        fields = video_fields(metadata, config)
    except ValueError as exc:
        raise _error(config, 400, "bad request", str(exc)) from None
    has_body = bool(request.content_length) or request.headers.get("Transfer-Encoding") == "chunked"
    if has_body:
        _check_body_type(request, config)
        if length != UNKNOWN_LENGTH and request.content_length is not None and request.content_length > length:
            raise _error(config, 413, "payload too large",
                         f"a {request.content_length}-byte body for an Upload-Length of {length}")
    checksum = _checksum(request, config) if has_body else None
    upload_id = uuid.uuid4().hex
    now = time.time()
    upload = Upload(id=upload_id, length=length, metadata=metadata, owner=owner, created_at=now,
                    expires_at=now + float(config.uploads.expiration), partial=kind == "partial")
    # The partial file (or multipart upload) first, the records after: a record never points at
    # bytes that are not there.
    if uses_store(config):
        upload = await _open_in_store(request, config, upload)
    else:
        fd = os.open(partial_path(config, upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    if not upload.partial:  # a partial upload is never a video; the final one is
        await request.app[stores.CATALOG].create(Video(id=upload_id, created_at=now, owner=owner, **fields))
    await request.app[stores.UPLOAD_STORE].create(upload)
    if has_body or length == 0:
        upload = await _receive_locked(request, config, upload_id, owner, 0, checksum)
    headers = _progress_headers(config, upload)
    headers["Location"] = _location(request, config, upload_id)
    if not has_body:
        del headers["Upload-Offset"]  # tus creation: the offset is only reported with a body
    return web.Response(status=201, headers=headers)


async def _create_final(request: web.Request, config: Config, owner: str, partial_ids: list[str]) -> web.Response:
    """``Upload-Concat: final;...``: created whole from the partials, completed (assembled) at once."""
    if request.content_length:
        raise _error(config, 400, "bad request", "a final upload (Upload-Concat: final) takes no body")
    try:
        metadata = parse_metadata(request.headers.get("Upload-Metadata", ""))
        fields = video_fields(metadata, config)
        partials = await concat.partials_of(request.app, partial_ids, owner)
    except concat.ConcatError as exc:
        errors = {403: "forbidden", 404: "not found", 410: "gone"}
        raise _error(config, exc.status, errors.get(exc.status, "bad request"), str(exc)) from None
    except ValueError as exc:
        raise _error(config, 400, "bad request", str(exc)) from None
    length = sum(p.length for p in partials)
    _check_size(config, length)
    upload_id = uuid.uuid4().hex
    now = time.time()
    # Whole from the start: its bytes are the partials', durable already. If this edge dies before
    # the completion, the resubmitter finds it pending and assembles it.
    upload = Upload(id=upload_id, length=length, offset=length, metadata=metadata, owner=owner,
                    created_at=now, expires_at=now + float(config.uploads.expiration), concat=partial_ids)
    if uses_store(config):
        upload = await _open_in_store(request, config, upload)
    await request.app[stores.CATALOG].create(Video(id=upload_id, created_at=now, owner=owner, **fields))
    await request.app[stores.UPLOAD_STORE].create(upload)
    upload = await _receive_locked(request, config, upload_id, owner, None, None)
    headers = _progress_headers(config, upload)
    headers["Location"] = _location(request, config, upload_id)
    return web.Response(status=201, headers=headers)


async def head(request: web.Request) -> web.Response:
    config: Config = request.app[CONFIG]
    _check_resumable(request, config)
    upload = await _load(request, config, request.match_info["upload_id"], require_writer(request))
    headers = _progress_headers(config, upload)
    if upload.length == UNKNOWN_LENGTH:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(upload.length)
    if upload.partial or upload.concat:
        headers["Upload-Concat"] = concat.concat_header(
            upload, lambda upload_id: _location(request, config, upload_id))
    if upload.metadata:
        headers["Upload-Metadata"] = ",".join(f"{k} {v}".rstrip() for k, v in upload.metadata.items())
    return web.Response(status=200, headers=headers)


async def patch(request: web.Request) -> web.Response:
    config: Config = request.app[CONFIG]
    _check_resumable(request, config)
    _check_body_type(request, config)
    owner = require_writer(request)  # no rate limit per PATCH: bytes are metered (limits.ByteMeter)
    offset = _int_header(request, config, "Upload-Offset")
    length = _int_header(request, config, "Upload-Length") if "Upload-Length" in request.headers else None
    checksum = _checksum(request, config)
    require_room(config, request.content_length or 0)
    upload = await _receive_locked(request, config, request.match_info["upload_id"], owner, offset,
                                   checksum, length)
    return web.Response(status=204, headers=_progress_headers(config, upload))


async def terminate(request: web.Request) -> web.Response:
    config: Config = request.app[CONFIG]
    _check_resumable(request, config)
    owner = require_writer(request)
    await enforce(request, "api", owner)  # not an upload: never counted against creations
    upload_id = request.match_info["upload_id"]
    try:
        async with request.app[stores.UPLOAD_STORE].lock(upload_id, float(config.uploads.lock_wait)):
            upload = await _load(request, config, upload_id, owner)
            if upload.done:
                # Its bytes became a video: terminating the upload would delete nothing a client
                # can see (and must not take the video's source away), so say where to go.
                raise _error(config, 409, "conflict",
                             f"the upload is complete and is video {upload_id}: delete it with "
                             f"DELETE /api/v1/videos/{upload_id}")
            try:
                await intake.discard_upload(request.app, upload)
            except StorageUnavailable as exc:
                raise _unavailable(config, exc) from None
    except UploadLocked:
        raise _error(config, 423, "locked", "another request is writing this upload; retry",
                     **{"Retry-After": "1"}) from None
    return web.Response(status=204, headers=_headers(config))


async def options(request: web.Request) -> web.Response:
    config: Config = request.app[CONFIG]
    return web.Response(status=204, headers=_headers(
        config, **{
            "Tus-Version": TUS_VERSION, "Tus-Extension": TUS_EXTENSIONS,
            "Tus-Max-Size": str(int(config.uploads.max_size)),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
            "Access-Control-Allow-Methods": "POST, HEAD, PATCH, DELETE, OPTIONS",
            "Access-Control-Allow-Headers": _ALLOW_HEADERS,
            "Access-Control-Max-Age": "86400",
        }))


async def method_override(request: web.Request) -> web.StreamResponse:
    # tus 1.0 core: X-HTTP-Method-Override MUST be taken as the method, for clients that only POST.
    method = request.headers.get("X-HTTP-Method-Override", "").upper()
    handler = {"PATCH": patch, "DELETE": terminate, "HEAD": head}.get(method)
    if handler is None:
        raise HTTPError(405, "method not allowed", "POST an upload only with X-HTTP-Method-Override")
    return await handler(request)


def setup(app: web.Application) -> None:
    hashes = app[source_hash.SOURCE_HASHES] = source_hash.SourceHashes()
    app.on_cleanup.append(hashes.close)
    app.router.add_post("/api/v1/uploads", create)
    app.router.add_route("OPTIONS", "/api/v1/uploads", options)
    item = "/api/v1/uploads/{upload_id:[0-9a-f]{32}}"
    app.router.add_route("HEAD", item, head)
    app.router.add_patch(item, patch)
    app.router.add_delete(item, terminate)
    app.router.add_post(item, method_override)
    app.router.add_route("OPTIONS", item, options)
