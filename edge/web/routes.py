"""Serves the web UI: ``/`` is the single page, ``/web/...`` its scripts, styles and vendored
libraries (static/, shipped as package data so an installed wheel serves them).

The pages route with the URL fragment (``/#/watch/<id>``), so the server needs one HTML route;
a share link is a plain URL that works without any server-side routing.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from streamgate.edge.web import dashboard, events

STATIC_DIR = Path(__file__).parent / "static"
# The page itself always revalidates, so a new release's page is seen at once; the assets it
# names are small and revalidate too (ETag/Last-Modified from aiohttp's static handler).
_NO_CACHE = {"Cache-Control": "no-cache"}


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=_NO_CACHE)


def setup(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_static("/web/", STATIC_DIR, append_version=False)
    dashboard.setup(app)
    events.setup(app)
