"""``GET /api/v1/web/events``: the dashboard's figures as server-sent events.

One ``dashboard`` event (the JSON of ``/api/v1/web/dashboard``) every ``INTERVAL_S``, so the page
stays live without polling. A stream ends after ``MAX_STREAM_S`` (the browser's EventSource
reconnects by itself after the ``retry`` delay) and at once when the edge shuts down, so an open
page never holds up an ordered stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from aiohttp import web

from streamgate.edge.access.auth import identity
from streamgate.edge.access.ratelimit import enforce
from streamgate.edge.web.dashboard import snapshot

INTERVAL_S = 2.0
MAX_STREAM_S = 300.0
RETRY_MS = 2000
_CLOSING = web.AppKey("web_events_closing", asyncio.Event)


async def stream(request: web.Request) -> web.StreamResponse:
    caller = identity(request)
    await enforce(request, "api", caller)
    closing = request.app[_CLOSING]
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store",
        # Reverse proxies (nginx) would otherwise buffer the stream.
        "X-Accel-Buffering": "no"})
    await response.prepare(request)
    await response.write(f"retry: {RETRY_MS}\n\n".encode())
    deadline = time.monotonic() + MAX_STREAM_S
    try:
        while not closing.is_set() and time.monotonic() < deadline:
            data = json.dumps(await snapshot(request.app, caller), separators=(",", ":"))
            await response.write(f"event: dashboard\ndata: {data}\n\n".encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), INTERVAL_S)
    except (ConnectionResetError, ConnectionError):
        pass  # the page went away
    return response


async def _on_shutdown(app: web.Application) -> None:
    app[_CLOSING].set()


def setup(app: web.Application) -> None:
    app[_CLOSING] = asyncio.Event()
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/api/v1/web/events", stream)
