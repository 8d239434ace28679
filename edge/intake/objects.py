"""The object store of the intake (``storage.backend: s3``): opened once per edge process.

On disk (the single-node default) nothing is opened and the intake keeps its partial files.
"""

from __future__ import annotations

from aiohttp import web

from streamgate.common import layout
from streamgate.common.config import Config
from streamgate.common.storage import ObjectStore, StorageUnavailable, open_store
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

    async def storage_check(app: web.Application) -> tuple[bool, str]:
        # A HEAD of a key that need not exist: any answer means the store is reachable.
        try:
            await store.head(f"{layout.UPLOADS}/.readiness")
        except StorageUnavailable as exc:
            return False, f"unavailable: {exc}"
        return True, f"{store.name} reachable"

    # setdefault: whichever part of the edge opens a store first reports on it.
    app[READINESS_CHECKS].setdefault("storage", storage_check)
    try:
        yield
    finally:
        await store.close()
