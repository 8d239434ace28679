"""The edge process's one object store (``storage.backend: s3``), shared by the intake (tus
uploads into multipart objects) and playback (the store tier behind the caches).

On disk (the single-node default) nothing is opened: the intake keeps its partial files and
playback reads the media tree from the data dir.
"""

from __future__ import annotations

from aiohttp import web

from streamgate.common.config import Config
from streamgate.common.storage import ObjectStore, open_store
from streamgate.edge.health import storage_check
from streamgate.edge.keys import CONFIG, READINESS_CHECKS

OBJECT_STORE: web.AppKey[ObjectStore] = web.AppKey("object_store")


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

    app[READINESS_CHECKS]["storage"] = storage_check(store)
    try:
        yield
    finally:
        await store.close()
