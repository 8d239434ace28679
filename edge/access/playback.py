"""Who may play what: the hook the playback path calls once per request before serving a file.

Public videos pass. A private video plays with its owner's bearer token, or through a signed,
expiring playback URL ``/s/{token}/videos/{id}/...``: the token sits in the path prefix, so every
relative URI in the HLS playlists and the DASH manifest resolves under it and carries it
(RFC 3986 section 5.2 reference resolution) with no playlist rewriting.

This is the playback hot path: visibility and owner come from an in-process cache with a short
TTL, never a store round-trip per segment; a token check is one HMAC.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from redis.exceptions import RedisError

from streamgate.edge import stores
from streamgate.edge.access.auth import identity
from streamgate.edge.access.tokens import BadToken
from streamgate.edge.errors import HTTPError
from streamgate.edge.keys import CONFIG
from streamgate.edge.objects import uses_store

# Visibility and owner never change after creation; the TTL only bounds how long a deleted
# video's entry lingers, and how long an unknown id stays unknown.
CACHE_TTL_S = 2.0
_CACHE_MAX = 100_000
RETRY_AFTER_S = 2  # a Redis restart or failover takes about this long
log = logging.getLogger("streamgate.edge")

def is_owner(owner: str, caller: str) -> bool:
    """The one owner rule: a video uploaded without a wallet (``auth.required: false``) has no
    owner and is every caller's; otherwise only its owner's."""
    return not owner or caller == owner


def require_owner(owner: str, caller: str, what: str) -> None:
    """401 (sign in) or 403 (another wallet) unless ``caller`` may ``what`` on a video of ``owner``."""
    if is_owner(owner, caller):
        return
    if not caller:
        raise HTTPError(401, "unauthorized", f"sign in: only the owner may {what}",
                        {"WWW-Authenticate": "Bearer"})
    raise HTTPError(403, "forbidden", f"only the owner may {what}")


async def _lookup(app: web.Application, video_id: str) -> tuple[str | None, str]:
    cache = app[stores.ACCESS_CACHE]
    entry = cache.get(video_id)
    if entry is not None and entry[0] > time.monotonic():
        return entry[1], entry[2]
    lookups = app.get(stores.ACCESS_LOOKUPS)
    if lookups is None:
        return await _fetch(app, video_id, None)
    # When an entry expires every connection playing the video asks at once: one catalog read
    # answers them all (issue 18: a herd of GETs, each checking out a pool connection, was a
    # twelfth of a Redis-served playlist's CPU).
    task = lookups.get(video_id)
    if task is None:
        task = asyncio.get_running_loop().create_task(_fetch(app, video_id, lookups),
                                                      name="access-lookup")
        lookups[video_id] = task
        task.add_done_callback(lambda t: _reap(lookups, video_id, t))
    return await asyncio.shield(task)


async def _fetch(app: web.Application, video_id: str,
                 lookups: dict[str, asyncio.Task[tuple[str | None, str]]] | None) -> tuple[str | None, str]:
    cache = app[stores.ACCESS_CACHE]
    now = time.monotonic()
    video = await app[stores.CATALOG].get(video_id)
    visibility, owner = (video.visibility, video.owner) if video else (None, "")
    # A delete forgets the lookup in flight (forget below): its answer, read before the
    # delete, must not be cached after it.
    if lookups is None or lookups.get(video_id) is asyncio.current_task():
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[video_id] = (now + CACHE_TTL_S, visibility, owner)
    return visibility, owner


def _reap(lookups: dict[str, asyncio.Task[tuple[str | None, str]]], video_id: str,
          task: asyncio.Task[tuple[str | None, str]]) -> None:
    if lookups.get(video_id) is task:
        del lookups[video_id]
    if not task.cancelled():
        task.exception()  # retrieved: each waiter gets it through its own await


def forget(app: web.Application, video_id: str) -> None:
    """Drop a cached entry (this process) after a delete."""
    app[stores.ACCESS_CACHE].pop(video_id, None)
    lookups = app.get(stores.ACCESS_LOOKUPS)
    if lookups is not None:
        lookups.pop(video_id, None)


async def authorize_playback(request: web.Request, video_id: str) -> None:
    """Raise ``HTTPError`` (401/403) when the request may not play ``video_id``."""
    app = request.app
    if stores.CATALOG not in app:  # an app built without the intake (delivery-only tests)
        return
    # In a fleet (the s3 backend) every edge's tiers (memory, Redis, disk cache) may still hold a
    # video that another edge deleted: the catalog is what says it exists, not a cached copy.
    in_fleet_store = CONFIG in app and uses_store(app[CONFIG])
    token = request.match_info.get("token")
    if token is not None:
        try:
            claims = app[stores.SIGNER].verify(token, "play")
        except BadToken as exc:
            raise HTTPError(403, "forbidden", f"playback URL refused: {exc}") from None
        if claims.vid != video_id:
            raise HTTPError(403, "forbidden", "this playback URL is for another video")
        if in_fleet_store and (await _lookup(app, video_id))[0] is None:
            raise HTTPError(404, "not found", "no such video")
        return
    try:
        visibility, owner = await _lookup(app, video_id)
    except (RedisError, OSError) as exc:
        # The catalog (Redis in a fleet) is down: a passing fault, not the edge's bug (issue 14).
        log.warning("access check of %s: catalog unavailable: %s", video_id, exc)
        raise HTTPError(503, "service unavailable", "the catalog is unreachable; retry shortly",
                        {"Retry-After": str(RETRY_AFTER_S)}) from None
    if visibility is None and in_fleet_store:
        raise HTTPError(404, "not found", "no such video")
    if visibility != "private":
        return  # public, or unknown on disk (the playback path answers 404)
    require_owner(owner, identity(request), "play this private video (or use a signed playback URL)")
