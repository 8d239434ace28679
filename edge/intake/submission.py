"""The edge's link to the farm broker: submit a queued video's job, cancel it, follow its events.

The submitter uses the process's one broker client (``FARM_CLIENT``, edge/intake/farm_link.py, which
owns and closes it), so it follows the broker leader in a fleet with Consul. A failure to reach the broker is a reason, never an exception that
loses a video: the caller leaves the video queued and the resubmitter (edge/intake/completion.py) tries again
(submits are idempotent by job id, so a retry against a new leader is safe).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from streamgate.common import layout
from streamgate.common.broker_client import BrokerClient, BrokerError, BrokerUnavailable
from streamgate.common.config import Config
from streamgate.common.protocol import JobSpec
from streamgate.edge.catalog import Video

log = logging.getLogger("streamgate.edge.intake.submission")

SUBMITTER: web.AppKey[JobSubmitter] = web.AppKey("job_submitter")


class JobSubmitter:
    def __init__(self, config: Config, client: BrokerClient) -> None:
        self._config = config
        self._client = client

    def spec(self, video: Video) -> JobSpec:
        """The job of a queued video."""
        # In a fleet (storage.backend: s3) the job names objects: video.source is the source's key.
        fleet = self._config.storage.backend == "s3"
        job = JobSpec(job_id=video.id, source=video.source,
                      out_dir=str(self._config.storage.media_dir / video.id),
                      priority=video.priority, submitted_at=time.time(),
                      source_key=video.source if fleet else "",
                      media_prefix=layout.media_prefix(video.id) if fleet else "")
        return job

    async def submit(self, video: Video) -> str | None:
        """None when the broker accepted the job, else why not (the video stays queued)."""
        job = self.spec(video)
        try:
            reply = await self._client.submit(job)
        except (BrokerUnavailable, BrokerError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        if reply.accepted:
            return None
        return reply.reason or "refused"

    async def cancel(self, video_id: str) -> None:
        try:
            await self._client.cancel(video_id)
        except (BrokerUnavailable, BrokerError, OSError) as exc:
            # Best effort: the media is removed either way, and a job whose video is gone is
            # ignored by the progress follower.
            log.warning("cancel %s: %s: %s", video_id, type(exc).__name__, exc)

    async def job(self, video_id: str) -> Any:
        """The broker's JobInfo for a video, or None; raises BrokerUnavailable when down."""
        return await self._client.job(video_id)

    @contextlib.asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[Any]]:
        """A live event stream (the subscription confirmed by the broker's first tick)."""
        async with self._client.events() as stream:
            await stream.live()
            yield stream
