"""``/health`` (liveness) and ``/api/v1/health`` (readiness with each dependency's state)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from streamgate.common.config import Config
from streamgate.common.storage import ObjectStore, StorageUnavailable
from streamgate.edge.keys import ADVISORY_CHECKS, CONFIG, READINESS_CHECKS, STARTED_AT
from streamgate.edge.redact import strip_paths

# A readiness check answers (ok, detail); registered by the parts of the edge that have dependencies.
Check = Callable[[web.Application], Awaitable[tuple[bool, str]]]


async def liveness(request: web.Request) -> web.Response:
    from streamgate import __version__

    return web.json_response({
        "status": "ok",
        "role": "edge",
        "version": __version__,
        "uptime_s": round(time.monotonic() - request.app[STARTED_AT], 3),
    })


# How long one readiness probe may take. HAProxy (and Kubernetes) give the whole answer a second
# or so, and the checks run side by side, so a dependency that hangs costs its own bound, never
# the answer: an advisory check (the broker, a 2 s timeout of its own) is cut much sooner, so a
# broker failing over never makes an edge's readiness time out at the balancer.
CHECK_TIMEOUT_S = 0.8
ADVISORY_TIMEOUT_S = 0.25


async def _probe(app: web.Application, check: Check, timeout_s: float) -> dict[str, object]:
    try:
        ok, detail = await asyncio.wait_for(check(app), timeout_s)
    except TimeoutError:
        ok, detail = False, f"no answer within {timeout_s:g}s"
    except Exception as exc:  # a failing probe is a fact to report, not an edge failure
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return {"ok": ok, "detail": strip_paths(detail)}  # public: no server paths (issue 14)


async def readiness(request: web.Request) -> web.Response:
    """200 while this edge can serve players: every check that playback needs passes. Advisory
    checks (the broker) are reported, with ``warnings`` naming those failing, but never fail it:
    a load balancer that took every edge out when the broker is away would stop playback, which
    never needs the broker, and uploads meanwhile queue and are resubmitted."""
    app = request.app
    advisory = app[ADVISORY_CHECKS]
    registered = app[READINESS_CHECKS]
    names = list(registered)
    results = await asyncio.gather(*(
        _probe(app, registered[name], ADVISORY_TIMEOUT_S if name in advisory else CHECK_TIMEOUT_S)
        for name in names))
    checks = dict(zip(names, results, strict=True))
    ready = all(c["ok"] for name, c in checks.items() if name not in advisory)
    warnings = sorted(name for name, c in checks.items() if name in advisory and not c["ok"])
    return web.json_response({"status": "ready" if ready else "degraded", "checks": checks,
                              "warnings": warnings}, status=200 if ready else 503)


async def disk_check(app: web.Application) -> tuple[bool, str]:
    config: Config = app[CONFIG]
    root = config.storage.root
    usage = shutil.disk_usage(root if root.exists() else root.parent)
    ok = usage.free >= config.storage.min_free_space
    return ok, f"{usage.free // 2**20} MiB free"


STORAGE_PROBE_KEY = "media/.readiness-probe"


def storage_check(store: ObjectStore) -> Check:
    """Readiness of the object store (s3 backend): one HEAD; a store that is down is ``degraded``."""

    async def check(app: web.Application) -> tuple[bool, str]:
        try:
            await store.head(STORAGE_PROBE_KEY)
        except StorageUnavailable as exc:
            return False, f"unavailable: {exc}"
        return True, f"{store.name} reachable"

    return check


def setup(app: web.Application) -> None:
    app[READINESS_CHECKS]["disk"] = disk_check
    app.router.add_get("/health", liveness)
    app.router.add_get("/api/v1/health", readiness)
