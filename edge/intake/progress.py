"""Follows the broker's PUB events and keeps the catalog's status, progress, ETA and result current.

PUB drops what a subscriber misses while away (ZeroMQ guide, "pub-sub"), so the status a late
event would overwrite is guarded: a ``ready`` or ``failed`` video never goes back to transcoding.

On a full disk the catalog cannot take the update: the event is held (the newest per video, an
outcome before any progress) and applied once the catalog takes writes again, so a job that
ended while the disk was full still shows its outcome (issue 14).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time

from aiohttp import web

from streamgate.common.protocol import JobDone, JobFailed, JobProgress, JobStarted
from streamgate.edge import stores
from streamgate.edge.catalog import Catalog, Rendition
from streamgate.edge.intake.submission import SUBMITTER
from streamgate.edge.redact import strip_paths

log = logging.getLogger("streamgate.edge.intake.progress")

ACTIVE = ("queued", "transcoding")
# Progress events can arrive many times a second; the catalog needs a few.
PROGRESS_WRITE_INTERVAL_S = 0.5
RECONNECT_MAX_S = 5.0
HELD_RETRY_S = 1.0  # how often events a full disk kept from the catalog are tried again


class ProgressApplier:
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._last_write: dict[str, float] = {}

    async def apply(self, event: object) -> None:
        now = time.time()
        match event:
            case JobStarted(job_id=vid):
                await self._catalog.update(vid, {"status": "transcoding", "error": ""}, when=ACTIVE)
                video = await self._catalog.get(vid)
                if video is not None and video.started_at is None:
                    await self._catalog.update(vid, {"started_at": now}, when=ACTIVE)
            case JobProgress(job_id=vid, fraction=fraction, eta_s=eta):
                if now - self._last_write.get(vid, 0.0) < PROGRESS_WRITE_INTERVAL_S and fraction < 1:
                    return
                self._last_write[vid] = now
                video = await self._catalog.get(vid)
                if video is None or video.status not in ACTIVE:
                    return
                await self._catalog.update(vid, {
                    "status": "transcoding", "progress": max(0.0, min(1.0, float(fraction))),
                    "eta_s": eta, "started_at": video.started_at or now}, when=ACTIVE)
            case JobDone(job_id=vid, result=result):
                self._last_write.pop(vid, None)
                renditions = [Rendition(name=r.name, width=r.width, height=r.height, bandwidth=r.bandwidth)
                              for r in result.renditions]
                await self._catalog.update(vid, {
                    "status": "ready", "progress": 1.0, "eta_s": 0.0, "error": "",
                    "duration": result.duration_s, "renditions": renditions}, when=ACTIVE)
            case JobFailed(job_id=vid, reason=reason, final=final):
                self._last_write.pop(vid, None)
                changes: dict[str, object] = {"error": strip_paths(reason)}  # no server paths in the API
                if final:
                    changes.update(status="failed", eta_s=None)
                await self._catalog.update(vid, changes, when=ACTIVE)
            case _:
                return


def _outcome(event: object) -> bool:
    return isinstance(event, JobDone) or isinstance(event, JobFailed) and event.final


class HeldEvents:
    """Events the catalog could not take (ENOSPC), newest per video, retried every HELD_RETRY_S."""

    def __init__(self, applier: ProgressApplier) -> None:
        self._applier = applier
        self._held: dict[str, object] = {}
        self._next_retry = 0.0

    async def apply(self, event: object) -> None:
        await self.retry()
        job_id = getattr(event, "job_id", None)
        try:
            await self._applier.apply(event)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or job_id is None:
                raise
            if not self._held:
                log.warning("catalog full (%s): job events held until the disk has room", exc)
            if _outcome(event) or not _outcome(self._held.get(job_id)):
                self._held[job_id] = event
            self._next_retry = time.monotonic() + HELD_RETRY_S
            return
        if job_id is not None and not _outcome(self._held.get(job_id)):
            self._held.pop(job_id, None)

    async def run(self) -> None:
        """Retry on a clock too: after a job's last event none may come to carry the retry."""
        while True:
            await asyncio.sleep(HELD_RETRY_S)
            try:
                await self.retry()
            except Exception:  # the next turn tries again; the loop must not die
                log.exception("applying held job events failed")

    async def retry(self) -> None:
        if not self._held or time.monotonic() < self._next_retry:
            return
        for job_id, event in list(self._held.items()):
            try:
                await self._applier.apply(event)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                self._next_retry = time.monotonic() + HELD_RETRY_S
                return
            del self._held[job_id]
        log.info("catalog takes writes again: held job events applied")


async def follow_events(app: web.Application) -> None:
    """Runs for the edge's life: subscribe, apply, and on any break resubscribe with backoff."""
    applier = ProgressApplier(app[stores.CATALOG])
    held = HeldEvents(applier)
    retrier = asyncio.create_task(held.run(), name="held-job-events")
    try:
        await _follow(app, applier, held)
    finally:
        retrier.cancel()
        await asyncio.gather(retrier, return_exceptions=True)


async def _follow(app: web.Application, applier: ProgressApplier, held: HeldEvents) -> None:
    delay = 0.2
    while True:
        try:
            async with app[SUBMITTER].events() as stream:
                delay = 0.2
                # What happened while we were not subscribed is only known by asking.
                await reconcile(app, applier)
                async for event in stream:
                    try:
                        await held.apply(event)
                    except Exception:  # one bad update must not stop the stream
                        log.exception("applying %r failed", event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("broker events unavailable (%s); retrying in %.1fs", exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX_S)


async def reconcile(app: web.Application, applier: ProgressApplier) -> None:
    """Bring submitted videos up to the broker's view of their jobs."""
    catalog = app[stores.CATALOG]
    for status in ACTIVE:
        for video_id in await catalog.with_status(status):
            video = await catalog.get(video_id)
            if video is None or video.submitted_at is None:
                continue
            info = await app[SUBMITTER].job(video_id)
            if info is None:
                continue
            if info.state == "done" and info.result is not None:
                await applier.apply(JobDone(job_id=video_id, attempts=info.attempts, result=info.result))
            elif info.state == "failed":
                await applier.apply(JobFailed(job_id=video_id, attempt=info.attempts,
                                              reason=info.reason or "failed", final=True))
            elif info.state == "running":
                await applier.apply(JobProgress(job_id=video_id, attempt=info.attempts,
                                                fraction=info.progress, eta_s=info.eta_s))
