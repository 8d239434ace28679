"""Playback routes: HLS and DASH files of a video, plain or under a signed prefix ``/s/{token}``.

``/videos/{id}/master.m3u8``, ``/videos/{id}/manifest.mpd`` and every file they reference,
answered with explicit Content-Types, Range (206/416), HEAD, ETag/If-None-Match (304),
Cache-Control by kind (segments immutable, playlists short while growing) and CORS. This module
is the complete aiohttp path; edge/fastpath/protocol.py answers the plain GETs of the same routes
without aiohttp's per-request machinery and hands everything else here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from aiohttp import web

from streamgate.common.config import Config
from streamgate.edge import metrics
from streamgate.edge.access import playback as access
from streamgate.edge.errors import HTTPError
from streamgate.edge.fastpath import sendfile
from streamgate.edge.keys import CONFIG, DISCOVERY, REDIS
from streamgate.edge.objects import OBJECT_STORE
from streamgate.edge.playback.conditional import RangeNotSatisfiable, parse_range
from streamgate.edge.playback.delivery import Delivery
from streamgate.edge.playback.files import Servable
from streamgate.edge.playback.names import BadMediaPath, parse_media_path
from streamgate.edge.playback.origin import DiscoveredOrigins, OriginResolver, StaticOrigins

DELIVERY = web.AppKey("delivery", Delivery)
# Set before startup to override; otherwise Consul's origin-tagged edges with registry.type
# consul (static config as their fallback), else the static config.
ORIGIN_RESOLVER = web.AppKey("origin_resolver", OriginResolver)

ALLOW_METHODS = "GET, HEAD, OPTIONS"
ALLOW_HEADERS = "Range, If-None-Match, If-Range, Authorization"


def default_resolver(config: Config) -> StaticOrigins:
    return StaticOrigins([config.edge.origin_url] if config.edge.origin_url
                         else list(config.registry.static_origins))


def preflight_headers(config: Config) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": config.edge.cors_allow_origin,
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": "86400"}


def checked_path(video_id: str, rel: str) -> tuple[str, str]:
    try:
        return parse_media_path(video_id, rel)
    except BadMediaPath as exc:
        raise HTTPError(400, "bad path", str(exc)) from None


def etag_matches(if_none_match: str, etag: str) -> bool:
    # RFC 9110 section 13.1.2: weak comparison, a list, or "*".
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


async def serve_file(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    route = "error"
    status = 500
    sent = 0
    try:
        video_id, rel = checked_path(request.match_info["id"], request.match_info["path"])
        route = metrics.route_class(rel)
        await access.authorize_playback(request, video_id)
        entry = await request.app[DELIVERY].lookup(video_id, rel)
        response, sent = await respond(request, entry)
        status = response.status
        return response
    except HTTPError as exc:
        status = exc.status
        # Players on other origins must be able to read the error too.
        exc.headers.setdefault("Access-Control-Allow-Origin", request.app[CONFIG].edge.cors_allow_origin)
        raise
    finally:
        request.app[DELIVERY].metrics.observe(route, status, sent, time.perf_counter() - started)


async def respond(request: web.Request, entry: Servable) -> tuple[web.StreamResponse, int]:
    headers = entry.headers
    inm = request.headers.get("If-None-Match")
    if inm is not None and etag_matches(inm, entry.etag):
        return web.Response(status=304, headers=headers), 0
    start, end, status = 0, entry.size, 200
    range_header = request.headers.get("Range")
    if range_header is not None:
        if_range = request.headers.get("If-Range")
        if if_range is None or if_range.strip() == entry.etag:
            try:
                wanted = parse_range(range_header, entry.size)
            except RangeNotSatisfiable as exc:
                raise HTTPError(416, "range not satisfiable", str(exc),
                                {"Content-Range": f"bytes */{entry.size}", **_cors(headers)}) from None
            if wanted is not None:  # None: ignored, the whole body (RFC 9110 section 14.2)
                (start, end), status = wanted, 206
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start
    if status == 206:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry.size}"
    if request.method == "HEAD":
        await response.prepare(request)
        await response.write_eof()
        return response, 0
    if entry.body is not None:
        await response.prepare(request)
        await response.write(entry.body[start:end])
        await response.write_eof()
        return response, end - start
    entry.acquire()
    try:
        writer = await response.prepare(request)
        assert writer is not None
        writer.send_headers()
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        if entry.fd is None:
            raise HTTPError(503, "file closed", "retry", {"Retry-After": "1"})
        sent = await sendfile.send(transport, [], entry.fd, start, end - start)
    finally:
        entry.release()
    await response.write_eof()
    return response, sent


def _cors(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("Access-Control")}


async def preflight(request: web.Request) -> web.Response:
    request.app[DELIVERY].metrics.observe("preflight", 204, 0, 0.0)
    return web.Response(status=204, headers=preflight_headers(request.app[CONFIG]))


async def delivery_ctx(app: web.Application) -> AsyncIterator[None]:
    """The delivery tiers (memory, Redis hot tier, disk cache, origin or object store) and the
    metrics flusher."""
    config = app[CONFIG]
    if ORIGIN_RESOLVER not in app:
        # The Discovery belongs to its own context (edge/app.py), which closes it after this one.
        discovery = app.get(DISCOVERY)
        app[ORIGIN_RESOLVER] = (DiscoveredOrigins(discovery) if discovery is not None
                                else default_resolver(config))
    # In a fleet the media is in the object store (edge/objects.py opened it, after the caches'
    # own contexts and before this one), which replaces origin pull (storepull.py).
    store = app.get(OBJECT_STORE)
    delivery = Delivery(config, app.get(REDIS), app[ORIGIN_RESOLVER], store)
    app[DELIVERY] = delivery
    flusher = asyncio.create_task(metrics.flush_forever(), name="edge-metrics-flush")
    yield
    flusher.cancel()
    await asyncio.gather(flusher, return_exceptions=True)
    await delivery.close()


def setup(app: web.Application) -> None:
    for prefix in ("", "/s/{token}"):
        app.router.add_get(prefix + "/videos/{id}/{path:.+}", serve_file, allow_head=True)
        app.router.add_route("OPTIONS", prefix + "/videos/{id}/{path:.+}", preflight)
    metrics.setup(app)
