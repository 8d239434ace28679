"""The edge role: serves the edge application on ``server.host:server.port``."""

from __future__ import annotations

import logging

from aiohttp import web

from ..common.service import ServiceContext
from .app import build_app

log = logging.getLogger("streamgate.edge")


async def serve(ctx: ServiceContext) -> None:
    config = ctx.config
    app = build_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=float(config.server.shutdown_timeout))
    await runner.setup()
    # SO_REUSEPORT lets several edge processes share the port; the kernel spreads connections.
    site = web.TCPSite(runner, config.server.host, config.server.port, reuse_port=True)
    await site.start()
    ctx.ready(f"edge on {config.server.host}:{config.server.port}")
    try:
        await ctx.stop.wait()
    finally:
        await runner.cleanup()
