"""What happens once an upload's bytes are all in: the source moved into place, the video queued,
its job submitted; and the background work that keeps that promise (never lost):

* ``resubmit``: queued videos the broker has not accepted yet (down, full) are submitted again,
  and uploads whose bytes all arrived but whose completion was cut short (a crash) are completed.
* ``sweep``: expired partial uploads are deleted (tus 1.0 expiration extension).

Every edge process runs both loops; the per-upload lock makes each step happen once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from streamgate.common.config import Config
from streamgate.edge import stores
from streamgate.edge.access import playback as access
from streamgate.edge.intake import concat, s3_upload, source_hash
from streamgate.edge.intake import farm_link as farm_api
from streamgate.edge.intake.metadata import metadata_text
from streamgate.edge.intake.paths import partial_path, source_path
from streamgate.edge.intake.progress import follow_events
from streamgate.edge.intake.state import Upload, UploadLocked
from streamgate.edge.intake.submission import SUBMITTER, JobSubmitter
from streamgate.edge.keys import CONFIG
from streamgate.edge.objects import OBJECT_STORE, uses_store

log = logging.getLogger("streamgate.edge.intake.completion")

_TASKS = web.AppKey("intake_tasks", set[asyncio.Task[Any]])


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _move_durably(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.move(src, dst)  # sources on another file system than uploads
    # The rename is durable once the directory entry is (rename(2) + fsync of the directory).
    fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def complete_upload(app: web.Application, upload: Upload) -> Upload:
    """Idempotent; run under the upload's lock once ``offset == length``."""
    if upload.partial:  # tus concatenation: a part of a file, never a video of its own
        return await concat.finish_partial(app, upload)
    config: Config = app[CONFIG]
    catalog = app[stores.CATALOG]
    video = await catalog.get(upload.id)
    filename = video.filename if video else metadata_text(upload.metadata, "filename")
    partial, source = partial_path(config, upload.id), source_path(config, upload.id, filename)
    # The final upload: its partials joined into its bytes first, unless an edge cut short after
    # the join moved them into place (the first partial's file is the source then).
    if upload.concat and (upload.source_key or not source.exists()):
        try:
            upload = await concat.assemble(app, upload)
        except FileNotFoundError as exc:
            log.error("upload %s: cannot assemble: %s", upload.id, exc)
            await catalog.update(upload.id, {"status": "failed", "error": "a partial upload was lost"},
                                 when={"uploading"})
            upload = msgspec.structs.replace(upload, done=True)
            await app[stores.UPLOAD_STORE].save(upload)
            return upload
    hashes = source_hash.of(app)
    # The running hash of the bytes as they were acknowledged (edge/intake/source_hash.py), taken
    # before the partial file moves; else the source is read once below.
    running = await hashes.digest(upload.id, upload.length) if hashes is not None else None
    found: str | None = ""
    if upload.source_key:  # storage.backend: s3: complete the multipart upload
        found = await s3_upload.complete(app[OBJECT_STORE], upload)
    elif partial.exists():
        await asyncio.to_thread(_move_durably, partial, source)
    if found is None or (not upload.source_key and not source.exists()):
        log.error("upload %s: complete but neither the partial file nor the source exists", upload.id)
        await catalog.update(upload.id, {"status": "failed", "error": "the uploaded file was lost"},
                             when={"uploading"})
        upload = msgspec.structs.replace(upload, done=True)
        await app[stores.UPLOAD_STORE].save(upload)
        return upload
    sha256 = found or running or await asyncio.to_thread(_hash_file, source)
    if hashes is not None:
        hashes.forget(upload.id)
    # In a fleet the source is an object (its key), on one node this host's path.
    where = upload.source_key or str(source)
    queued = await catalog.update(upload.id, {"status": "queued", "sha256": sha256, "source": where,
                                              "size": upload.length}, when={"uploading"})
    upload = msgspec.structs.replace(upload, done=True)
    await app[stores.UPLOAD_STORE].save(upload)
    if upload.concat:
        await concat.release(app, upload)
    if queued is not None:
        log.info("upload %s complete: %d bytes, sha256 %s", upload.id, upload.length, sha256)
        # Not awaited by the PATCH: a down broker must not hold the client; the video is queued
        # either way and the resubmitter retries.
        _spawn(app, submit(app, queued.id), f"submit-{queued.id}")
    return upload


async def submit(app: web.Application, video_id: str) -> bool:
    """Submit a queued video's job; True when the broker took it (else it stays queued)."""
    catalog = app[stores.CATALOG]
    video = await catalog.get(video_id)
    if video is None or video.status != "queued" or video.submitted_at is not None:
        return False
    reason = await app[SUBMITTER].submit(video)
    if reason is not None:
        log.warning("video %s stays queued: %s", video_id, reason)
        return False
    await catalog.update(video_id, {"submitted_at": time.time()})
    return True


async def discard_upload(app: web.Application, upload: Upload) -> None:
    """tus termination: the partial file, the state (a tombstone answers 410) and, if unfinished, the video."""
    config: Config = app[CONFIG]
    if upload.source_key:  # the store first: a failure there (503) leaves the upload as it was
        await s3_upload.discard(app[OBJECT_STORE], upload)
    with contextlib.suppress(FileNotFoundError):
        partial_path(config, upload.id).unlink()
    await app[stores.UPLOAD_STORE].remove(upload.id)
    if (hashes := source_hash.of(app)) is not None:
        hashes.forget(upload.id)
    if not upload.done:
        await app[stores.CATALOG].delete(upload.id)
        access.forget(app, upload.id)


async def resubmit_once(app: web.Application) -> int:
    """One pass of the resubmitter; returns how many jobs the broker accepted."""
    store, catalog = app[stores.UPLOAD_STORE], app[stores.CATALOG]
    for upload in await store.pending():
        with contextlib.suppress(UploadLocked):
            async with store.lock(upload.id, 0):
                fresh = await store.get(upload.id)
                if fresh is not None and fresh.offset == fresh.length and not fresh.done:
                    await complete_upload(app, fresh)
    accepted = 0
    for video_id in await catalog.with_status("queued"):
        with contextlib.suppress(UploadLocked):
            # The upload's lock also guards submission, so two edges do not both submit.
            async with store.lock(video_id, 0):
                accepted += await submit(app, video_id)
    return accepted


async def sweep_once(app: web.Application, now: float | None = None) -> int:
    """Delete expired uploads; returns how many unfinished ones were removed."""
    store = app[stores.UPLOAD_STORE]
    swept = 0
    for upload in await store.expired(time.time() if now is None else now):
        with contextlib.suppress(UploadLocked):
            async with store.lock(upload.id, 0):
                fresh = await store.get(upload.id)
                if fresh is None:
                    continue
                await discard_upload(app, fresh)
                swept += not fresh.done
                if not fresh.done:
                    log.info("upload %s expired at offset %d of %d: swept", fresh.id, fresh.offset, fresh.length)
    if uses_store(app[CONFIG]):
        # Multipart uploads no live upload owns (its state lost, an edge killed mid-creation).
        swept += await s3_upload.abort_stale(app, time.time() if now is None else now)
    return swept


async def _every(interval_s: float, step: Any, app: web.Application, what: str) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await step(app)
        except Exception:  # a failed pass is retried next interval; the loop must not die
            log.exception("%s pass failed", what)


async def intake_ctx(app: web.Application) -> AsyncIterator[None]:
    """The submitter and the background loops: resubmit, sweep, follow the broker's events."""
    config: Config = app[CONFIG]
    # The process's one broker client (it follows the leader in a fleet); its context runs first.
    app[SUBMITTER] = JobSubmitter(config, app[farm_api.FARM_CLIENT])
    tasks: set[asyncio.Task[Any]] = set()
    app[_TASKS] = tasks
    loops = [
        (_every(float(config.uploads.resubmit_interval), resubmit_once, app, "resubmit"), "resubmit"),
        (_every(float(config.uploads.sweep_interval), sweep_once, app, "sweep"), "sweep"),
        (follow_events(app), "events"),
    ]
    for coro, name in loops:
        _spawn(app, coro, f"intake-{name}")
    yield
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _spawn(app: web.Application, coro: Any, name: str) -> None:
    tasks = app.get(_TASKS)
    if tasks is None:  # no intake context (a bare app): run nothing in the background
        coro.close()
        return
    task = asyncio.create_task(coro, name=name)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    task.add_done_callback(_reap)


def _reap(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("intake task %s failed", task.get_name(), exc_info=task.exception())
