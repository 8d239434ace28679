"""The object store of the intake (``storage.backend: s3``): opened once per edge process.

On disk (the single-node default) nothing is opened and the intake keeps its partial files.
"""

from __future__ import annotations

from aiohttp import web

from streamgate.common.config import Config
from streamgate.common.storage import ObjectStore, open_store
from streamgate.edge.health import storage_check
from streamgate.edge.keys import CONFIG, READINESS_CHECKS

OBJECT_STORE: web.AppKey[ObjectStore] = web.AppKey("intake_object_store")


def uses_store(config: Config) -> bool:
    return config.storage.backend == "s3"


async def objects_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    config: Config = app[CONFIG]
    if not uses_store(config):
        yield
        return
    # Opening makes no request (unless create_bucket): a store down at start gives 503s, not a dead edge.
    store = await open_store(config)
    app[OBJECT_STORE] = store

    # Playback (edge/playback/routes.py) opens its own store and sets the same check after this.
    app[READINESS_CHECKS].setdefault("storage", storage_check(store))
    try:
        yield
    finally:
        await store.close()
