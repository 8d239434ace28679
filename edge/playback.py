"""Not built yet: see the open issue that owns this part of the edge."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Registers nothing yet."""
