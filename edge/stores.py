"""The intake's stores, built once per edge process from the config: SQLite alone, Redis in a fleet.

``setup(app)`` is idempotent: uploads, videos and auth each call it, the first one registers the
cleanup context that opens the stores (after the shared Redis client, see edge/app.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from streamgate.common.config import Config
from streamgate.edge.access.nonces import NonceStore, RedisNonceStore, SqliteNonceStore
from streamgate.edge.access.ratelimit import RATE_LIMITER, MemoryBuckets, RateLimiter, RedisBuckets
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
_REGISTERED = web.AppKey("intake_stores_registered", bool)


def sqlite_path(config: Config) -> Any:
    return config.storage.state_dir / "edge.sqlite3"


async def _stores_ctx(app: web.Application) -> AsyncIterator[None]:
    config: Config = app[CONFIG]
    redis = app[REDIS]
    for folder in (config.storage.uploads_dir, config.storage.sources_dir, config.storage.media_dir,
                   config.storage.state_dir):
        folder.mkdir(parents=True, exist_ok=True)
    if redis is not None:
        app[CATALOG] = RedisCatalog(redis)
        app[UPLOAD_STORE] = RedisUploadStore(redis)
        app[NONCES] = RedisNonceStore(redis)
        app[RATE_LIMITER] = RateLimiter(config.edge.rate_limit, RedisBuckets(redis))
    else:
        path = sqlite_path(config)
        app[CATALOG] = SqliteCatalog(path)
        app[UPLOAD_STORE] = SqliteUploadStore(path, config.storage.uploads_dir / ".locks")
        app[NONCES] = SqliteNonceStore(path)
        app[RATE_LIMITER] = RateLimiter(config.edge.rate_limit, MemoryBuckets())
    app[SIGNER] = TokenSigner(load_secret(config))
    yield
    for store in (app[CATALOG], app[UPLOAD_STORE], app[NONCES]):
        await store.close()


def setup(app: web.Application) -> None:
    if app.get(_REGISTERED):
        return
    app[_REGISTERED] = True
    app[ACCESS_CACHE] = {}
    app.cleanup_ctx.append(_stores_ctx)
