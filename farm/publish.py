"""Jobs that name objects (``storage.backend: s3``): source from the store, ladder to the store.

The worker's runner runs in a thread of its own (farm/worker.py); the store's client is asyncio.
So a job gets a :class:`StoreLoop` (an event loop in one more thread) for its store calls: the
source is downloaded into a bounded scratch directory (``<data_dir>/scratch/<job>-<attempt>``),
the pipeline transcodes into scratch, and every finished output is handed to a
:class:`Publisher` through the pipeline's one publish hook. The publisher uploads on the store
loop, so uploads overlap encoding and never block the frame loop.

Order (no playlist ever names an object not yet stored): segments, inits and the poster go up
concurrently; a playlist or manifest is a barrier that goes up only after everything handed over
before it is stored, and playlists go up one at a time in the order they were made. The pipeline
hands a rung's init and segment over before the media playlist naming them, the master and the
MPD after every media playlist, the final VOD playlists after the last segment (transcode.py).

Scratch is removed after every job, whatever its outcome, and swept at worker start (a worker
killed with SIGKILL leaves its scratch behind). A store that is down fails the job retryably
(``Failed.retryable``: the broker retries with its backoff).

Why a scratch download and not ranged reads under PyAV: bench/farm_source_read.py measures both
on the same source (figures in docs/farm-storage.md); the download is faster, and the demuxer's seeks
(moov at the end, probe then decode) cost a round trip each on ranged reads.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from streamgate.common.config import Config
from streamgate.common.media import TranscodeResult
from streamgate.common.storage import (
    ObjectNotFound,
    ObjectStore,
    StorageError,
    StorageUnavailable,
    open_store,
)

log = logging.getLogger("streamgate.publish")

T = TypeVar("T")

SCRATCH = "scratch"
UPLOADS_IN_FLIGHT = 4  # segments of several rungs go up together; playlists wait for them


class SourceTooLarge(StorageError):
    """The source does not fit in scratch (free space below ``storage.min_free_space``)."""


class StoreFailed(Exception):
    """A store call of the job failed; ``retryable`` goes to the broker with the FAILED."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


def scratch_root(config: Config) -> Path:
    return config.storage.root / SCRATCH


def sweep_scratch(config: Config) -> int:
    """Remove what earlier workers left in scratch (one killed mid-job); returns how many."""
    root = scratch_root(config)
    if not root.is_dir():
        return 0
    removed = 0
    for entry in root.iterdir():
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        removed += 1
    if removed:
        log.info("swept %d leftover scratch entries from %s", removed, root)
    return removed


class StoreLoop:
    """An event loop in a thread of its own, holding the job's store client."""

    def __init__(self, config: Config) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="store-loop", daemon=True)
        self._thread.start()
        self.store: ObjectStore = self.call(open_store(config))

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def close(self) -> None:
        try:
            self.call(self.store.close())
        except Exception:  # closing a client of a dead store: nothing left to release
            pass
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self.loop.close()


class Publisher:
    """Uploads a scratch directory's outputs under ``prefix`` in the order described above."""

    def __init__(self, store_loop: StoreLoop, out_dir: Path, prefix: str,
                 in_flight: int = UPLOADS_IN_FLIGHT) -> None:
        self.store_loop = store_loop
        self.store = store_loop.store
        self.out_dir = out_dir
        self.prefix = prefix
        self.published: list[str] = []  # in the order they were stored (tests, logs)
        self.error: BaseException | None = None
        self._queue: asyncio.Queue[tuple[str, bytes | None] | None] = asyncio.Queue()
        self._gate = asyncio.Semaphore(in_flight)
        self._done = store_loop.submit(self._drain())

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}"

    def __call__(self, rel: str, data: bytes | None) -> None:
        """The pipeline's publish hook (transcode thread): hand over, never wait for the store."""
        if self.error is not None:
            raise self.error  # fail the transcode now rather than at its end
        self.store_loop.loop.call_soon_threadsafe(self._queue.put_nowait, (rel, data))

    def finish(self) -> None:
        """Wait until everything handed over is stored (or raise what failed)."""
        self.store_loop.loop.call_soon_threadsafe(self._queue.put_nowait, None)
        self._done.result()

    def abandon(self) -> None:
        self.store_loop.loop.call_soon_threadsafe(self._queue.put_nowait, None)
        try:
            self._done.result(30)
        except Exception:
            pass

    async def _drain(self) -> None:
        pending: set[asyncio.Task[None]] = set()
        try:
            while (item := await self._queue.get()) is not None:
                rel, data = item
                if data is None:
                    await self._gate.acquire()
                    task = asyncio.create_task(self._put(rel, None))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    task.add_done_callback(lambda _t: self._gate.release())
                    continue
                if pending:  # a playlist: only once what it may name is stored
                    await asyncio.gather(*pending)
                await self._put(rel, data)
            if pending:
                await asyncio.gather(*pending)
        except BaseException as exc:
            self._failed(exc)
            for task in pending:
                task.cancel()
            raise

    async def _put(self, rel: str, data: bytes | None) -> None:
        try:
            await self.store.put(self.key(rel), data if data is not None else self.out_dir / rel)
        except BaseException as exc:
            self._failed(exc)
            raise
        self.published.append(rel)

    def _failed(self, exc: BaseException) -> None:
        # The first failure is the job's reason; uploads cancelled because of it are not.
        if self.error is None and not isinstance(exc, asyncio.CancelledError):
            self.error = exc


def fetch_source(store_loop: StoreLoop, config: Config, key: str, scratch: Path) -> Path:
    """Download the source into scratch, bounded by the disk's free space less its reserve."""
    store = store_loop.store
    info = store_loop.call(store.head(key))
    if info is None:
        raise ObjectNotFound(f"no source object {key}")
    free = shutil.disk_usage(scratch).free - int(config.storage.min_free_space)
    if info.size > free:
        raise SourceTooLarge(f"source {key} is {info.size} bytes; scratch has {max(free, 0)} free")
    path = scratch / f"source{Path(key).suffix}"
    store_loop.call(store.download(key, path))
    return path


def run_store_pipeline(run: Any) -> TranscodeResult:
    """The runner of a job that names objects (farm/worker.py ``run_pipeline`` picks it)."""
    from streamgate.farm.pipeline.transcode import TranscodeSettings, transcode

    job, config = run.job, run.config
    if not job.media_prefix:
        raise StoreFailed(f"job {job.job_id} names a source object but no media_prefix", retryable=False)
    scratch = scratch_root(config) / f"{job.job_id}-{run.attempt}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    store_loop: StoreLoop | None = None
    publisher: Publisher | None = None
    try:
        try:
            store_loop = StoreLoop(config)
            source = fetch_source(store_loop, config, job.source_key, scratch)
            out_dir = scratch / "out"
            out_dir.mkdir()
            # A retried job starts clean: what an earlier attempt stored must not mix with this one.
            store_loop.call(store_loop.store.delete_prefix(f"{job.media_prefix}/"))
            publisher = Publisher(store_loop, out_dir, job.media_prefix)
            settings = TranscodeSettings.from_config(config.transcoder, **job.settings)
            result = transcode(source, out_dir, settings, on_progress=run.on_progress,
                               cancel=run.cancel, publish=publisher)
            publisher.finish()
            log.info("job %s: %d objects published under %s", job.job_id, len(publisher.published),
                     job.media_prefix)
            return result
        except StorageUnavailable as exc:
            raise StoreFailed(f"object store unavailable: {exc}", retryable=True) from exc
        except ObjectNotFound as exc:
            raise StoreFailed(f"cannot read source: {exc}", retryable=False) from exc
        except StorageError as exc:
            raise StoreFailed(f"object store: {type(exc).__name__}: {exc}", retryable=True) from exc
        except Exception as exc:
            # The pipeline wraps what the hook raised; a store that went down is still retryable.
            cause = publisher.error if publisher is not None else None
            if isinstance(cause, StorageError):
                raise StoreFailed(f"object store unavailable: {cause}", retryable=True) from exc
            raise
    finally:
        if publisher is not None and not publisher._done.done():
            publisher.abandon()  # the transcode stopped early: let the uploader end before the loop does
        if store_loop is not None:
            store_loop.close()
        shutil.rmtree(scratch, ignore_errors=True)


__all__ = ["Publisher", "StoreFailed", "StoreLoop", "run_store_pipeline", "scratch_root", "sweep_scratch"]
