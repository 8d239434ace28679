"""Builds the edge's aiohttp application from its parts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import web

from streamgate.common.config import Config
from streamgate.edge import health, objects, openapi, stores, videos
from streamgate.edge.access import auth
from streamgate.edge.access.origin import PUBLIC_ORIGIN, public_origin
from streamgate.edge.access.ratelimit import limit_middleware
from streamgate.edge.bodies import body_idle_middleware
from streamgate.edge.errors import error_middleware
from streamgate.edge.intake import completion, farm_link, tus
from streamgate.edge.keys import ADVISORY_CHECKS, CONFIG, DISCOVERY, READINESS_CHECKS, REDIS, STARTED_AT
from streamgate.edge.playback import routes
from streamgate.edge.web import dashboard
from streamgate.edge.web import routes as web_routes


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    url = app[CONFIG].cache.redis_url
    if not url:
        app[REDIS] = None
        yield
        return
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    app[REDIS] = client

    async def redis_check(app: web.Application) -> tuple[bool, str]:
        await client.ping()
        return True, "ping ok"

    app[READINESS_CHECKS]["redis"] = redis_check
    yield
    await client.aclose()


async def _discovery_ctx(app: web.Application) -> AsyncIterator[None]:
    """One Discovery per edge process (docs/control-plane.md), set before the parts that use it
    start and closed after they stopped (cleanup contexts unwind in reverse order)."""
    config = app[CONFIG]
    if config.registry.type != "consul":
        app[DISCOVERY] = None
        yield
        return
    from streamgate.common.consul.discovery import Discovery

    async with Discovery(config) as discovery:
        app[DISCOVERY] = discovery
        yield


def build_app(config: Config) -> web.Application:
    app = web.Application(
        # A body that stops arriving fails after the idle timeout on every route, and its
        # connection closes after the answer (edge/bodies.py: outermost, it sees that answer);
        # then errors as JSON; limits before any handler reads a token.
        middlewares=[body_idle_middleware(config.server.edge_read_timeout(config.edge)),
                     error_middleware, limit_middleware],
        client_max_size=1024**2,
        handler_args={"max_field_size": int(config.edge.max_header_size),
                      "max_line_size": int(config.edge.max_header_size),
                      # A body is read in pieces up to this size (aiohttp's default, 64 KiB, makes
                      # an upload's PATCH a hundred loop turns per 8 MiB); idle connections hold none.
                      "read_bufsize": 2**20},
    )
    app[CONFIG] = config
    app[PUBLIC_ORIGIN] = public_origin(config)  # ConfigError: no safe SIWE domain to check against
    app[STARTED_AT] = time.monotonic()
    app[READINESS_CHECKS] = {}
    app[ADVISORY_CHECKS] = set()
    # The contexts in start order (they close in reverse): each may use what the ones above set.
    for ctx in (
        _redis_ctx,  # app[REDIS]: the shared client, or None on a single node
        _discovery_ctx,  # app[DISCOVERY]: the one Consul watch (broker leader, origins)
        stores.stores_ctx,  # catalog, upload state, nonces, rate limiter, token signer
        objects.objects_ctx,  # the one object store (storage.backend: s3) of intake and playback
        farm_link.client_ctx,  # the one broker client (follows the leader through DISCOVERY)
        routes.delivery_ctx,  # playback tiers over REDIS and the origins from DISCOVERY
        completion.intake_ctx,  # submitter on the broker client; resubmit, sweep, events loops
        dashboard.sampler_ctx,  # the web dashboard's throughput history, sampled from the broker
    ):
        app.cleanup_ctx.append(ctx)
    # Routes only: no part registers a context of its own.
    for part in (health, routes, tus, videos, auth, farm_link, web_routes, openapi):
        part.setup(app)
    return app
