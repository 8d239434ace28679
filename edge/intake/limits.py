"""What a PATCH may send: the room left in its upload, and the per-client byte rate cap.

Uploads are limited by what they cost, not by how they are cut: creations count against
``edge.rate_limit.upload_*`` (tus.create), PATCH requests as such never do (a 64 MiB file in
256 KiB chunks is 256 PATCHes, and one upload). Body bytes count against
``edge.rate_limit.upload_bytes_per_second`` when it is set (default 0: no cap).
"""

from __future__ import annotations

from aiohttp import web

from streamgate.common.config import Config
from streamgate.edge.access.ratelimit import enforce
from streamgate.edge.intake.state import UNKNOWN_LENGTH, Upload
from streamgate.edge.keys import CONFIG

# Bytes charged per bucket call: one call per MiB, not per read (a read is often 64 KiB).
CHARGE_UNIT = 2**20


def room_for(config: Config, upload: Upload) -> int:
    """Bytes a PATCH may still append: up to Upload-Length, or Tus-Max-Size while deferred."""
    limit = int(config.uploads.max_size) if upload.length == UNKNOWN_LENGTH else upload.length
    return limit - upload.offset


class ByteMeter:
    """Charges a body's bytes to the client's ``upload_bytes`` buckets as they arrive; raises
    the 429 (with Retry-After) when the client is over its cap, before the bytes are written."""

    def __init__(self, request: web.Request, wallet: str) -> None:
        limits = request.app[CONFIG].edge.rate_limit
        cap = int(limits.upload_bytes_per_second) if limits.enabled else 0
        self.unit = min(CHARGE_UNIT, cap)  # a charge never exceeds the bucket (one second's worth)
        self.request = request
        self.wallet = wallet
        self.pending = 0

    async def charge(self, size: int) -> None:
        if self.unit <= 0:
            return
        self.pending += size
        while self.pending >= self.unit:
            await enforce(self.request, "upload_bytes", self.wallet, cost=float(self.unit))
            self.pending -= self.unit
