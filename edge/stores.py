"""The intake's stores, built once per edge process from the config: SQLite alone, Redis in a fleet.

``setup(app)`` is idempotent: uploads, videos and auth each call it, the first one registers the
cleanup context that opens the stores (after the shared Redis client, see edge/app.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from streamgate.common import layout
from streamgate.common.config import Config
from streamgate.edge.access.nonces import NonceStore, RedisNonceStore, SqliteNonceStore
from streamgate.edge.access.ratelimit import RATE_LIMITER, RateLimiter, RedisBuckets, SqliteBuckets
from streamgate.edge.access.tokens import TokenSigner, load_secret
from streamgate.edge.catalog import Catalog, RedisCatalog, SqliteCatalog
from streamgate.edge.intake.state import RedisUploadStore, SqliteUploadStore, UploadStore
from streamgate.edge.keys import CONFIG, REDIS

CATALOG = web.AppKey("catalog", Catalog)
UPLOAD_STORE = web.AppKey("upload_store", UploadStore)
NONCES = web.AppKey("nonces", NonceStore)
SIGNER = web.AppKey("token_signer", TokenSigner)
# edge/access/playback.py: video id -> (expires at (monotonic), visibility or None if unknown, owner).
ACCESS_CACHE = web.AppKey("access_cache", dict[str, tuple[float, str | None, str]])
# edge/access/playback.py: the catalog lookup in flight per video id, shared by its concurrent checks.
ACCESS_LOOKUPS = web.AppKey("access_lookups", dict[str, "asyncio.Task[tuple[str | None, str]]"])


def sqlite_path(config: Config) -> Any:
    return config.storage.state_dir / layout.EDGE_DB


async def stores_ctx(app: web.Application) -> AsyncIterator[None]:
    """The catalog, upload state, nonces, rate limiter and token signer (Redis in a fleet)."""
    config: Config = app[CONFIG]
    redis = app[REDIS]
    for folder in (config.storage.uploads_dir, config.storage.sources_dir, config.storage.media_dir,
                   config.storage.state_dir):
        folder.mkdir(parents=True, exist_ok=True)
    if redis is not None:
        keys = config.redis_keys
        app[CATALOG] = RedisCatalog(redis, keys.records)
        app[UPLOAD_STORE] = RedisUploadStore(redis, keys.records)
        app[NONCES] = RedisNonceStore(redis, keys.records)
        app[RATE_LIMITER] = RateLimiter(config.edge.rate_limit, RedisBuckets(redis, keys.rate_limits),
                                        config.server.trusted_proxies)
    else:
        path = sqlite_path(config)
        app[CATALOG] = SqliteCatalog(path)
        app[UPLOAD_STORE] = SqliteUploadStore(path, config.storage.uploads_dir / ".locks")
        app[NONCES] = SqliteNonceStore(path)
        # One file for the node's edge processes: the configured rate holds across --workers N.
        buckets = SqliteBuckets(config.storage.run_dir / "ratelimit.sqlite")
        app[RATE_LIMITER] = RateLimiter(config.edge.rate_limit, buckets, config.server.trusted_proxies)
    app[SIGNER] = TokenSigner(load_secret(config))
    app[ACCESS_CACHE] = {}
    app[ACCESS_LOOKUPS] = {}
    yield
    lookups = list(app[ACCESS_LOOKUPS].values())
    for task in lookups:
        task.cancel()
    await asyncio.gather(*lookups, return_exceptions=True)
    for store in (app[CATALOG], app[UPLOAD_STORE], app[NONCES]):
        await store.close()
    if redis is None:
        buckets.close()



