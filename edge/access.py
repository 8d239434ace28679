"""Who may play what: the hook the playback path calls before serving a video's files.

Edge intake and access (issue 6) fills this in with private videos, owners' tokens and signed URLs.
"""

from __future__ import annotations

from aiohttp import web


async def authorize_playback(request: web.Request, video_id: str) -> None:
    """Raise ``HTTPError`` (401/403) when the request may not play ``video_id``; all videos are public for now."""
