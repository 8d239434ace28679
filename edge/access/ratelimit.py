"""Token buckets per client address and per wallet, for the API and for uploads (429 + Retry-After).

Shared by every edge process: in Redis in a fleet, in one SQLite file under ``data/run/`` on a
single node (its ``--workers N`` copies each kept an in-memory bucket, so the node allowed N times
the configured rate: issue 14). A client cannot multiply its allowance by spreading requests over
processes or edges. A bucket holds up to ``burst`` tokens and refills at ``rate``/s.

The address bucket is taken by :func:`limit_middleware` before any handler reads a token, so a
flood of forged or missing tokens is limited like any other; the wallet bucket is taken by the
handler once it knows the wallet.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from aiohttp import web

from streamgate.common.config import RateLimitConfig
from streamgate.common.redis_keys import RedisKeys
from streamgate.common.sqlite import connect
from streamgate.edge.access.client import client_address, parse_networks
from streamgate.edge.errors import Handler, HTTPError

log = logging.getLogger("streamgate.edge.ratelimit")

Kind = Literal["api", "upload", "upload_bytes"]
RATE_LIMITER: web.AppKey[RateLimiter] = web.AppKey("rate_limiter")
# The kinds whose address bucket this request has taken (the middleware may take it first).
_ADDRESS_TAKEN = web.RequestKey("streamgate_rate_address_taken", set[str])


class Buckets(Protocol):
    async def take(self, key: str, rate: float, burst: int, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; 0 when granted, else the seconds until they are available."""


class MemoryBuckets:
    # Buckets idle long enough to be full again are dropped, bounding the dict.
    _PRUNE_EVERY = 10_000

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._ops = 0

    async def take(self, key: str, rate: float, burst: int, now: float, cost: float = 1.0) -> float:
        tokens, last = self._buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * rate)
        self._ops += 1
        if self._ops % self._PRUNE_EVERY == 0:
            self._prune(now, rate, burst)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / rate

    def _prune(self, now: float, rate: float, burst: int) -> None:
        full_after = burst / rate if rate > 0 else math.inf
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}


# One statement, so atomic across the processes sharing the file. SQLite evaluates every SET
# expression against the row as it was (sqlite.org/lang_update.html), so `granted` and `tokens`
# both see the refill before this take.
_REFILL = "min(:burst, tokens + max(0.0, :now - ts) * :rate)"
_SQLITE_TAKE = f"""
INSERT INTO buckets (key, tokens, ts, granted) VALUES (:key, :burst - :cost * (:burst >= :cost), :now, :burst >= :cost)
ON CONFLICT(key) DO UPDATE SET
    granted = ({_REFILL} >= :cost),
    tokens = {_REFILL} - :cost * ({_REFILL} >= :cost),
    ts = max(ts, :now)
RETURNING granted, tokens
"""


class SqliteBuckets:
    """The buckets of one node's edge processes, in one SQLite file (WAL, no fsync: a bucket lost
    in a power cut is a full bucket, which is what a restart gives anyway)."""

    _PRUNE_EVERY = 10_000
    _IDLE_S = 3600.0  # rows idle this long are full again under any sane rate

    def __init__(self, path: Path) -> None:
        self._db: sqlite3.Connection = connect(path, busy_timeout_s=2.0, foreign_keys=False)
        # While the data dir is full the file cannot take a write: this process's own buckets
        # keep limiting (at worst N times the rate) instead of every limited route answering 500.
        self._fallback = MemoryBuckets()
        self._full = False
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE IF NOT EXISTS buckets (key TEXT PRIMARY KEY, tokens REAL NOT NULL, "
                         "ts REAL NOT NULL, granted INTEGER NOT NULL) WITHOUT ROWID")
        self._ops = 0

    async def take(self, key: str, rate: float, burst: int, now: float, cost: float = 1.0) -> float:
        try:
            # fetchall: the statement must run to its end, or it keeps the file's write lock.
            ((granted, tokens),) = self._db.execute(
                _SQLITE_TAKE, {"key": key, "rate": rate, "burst": float(burst), "now": now,
                               "cost": cost}).fetchall()
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                raise
            if not self._full:
                log.warning("rate limits: %s; this process's own buckets limit until space returns", exc)
            self._full = True
            return await self._fallback.take(key, rate, burst, now, cost)
        if self._full:
            log.info("rate limits: the shared buckets take writes again")
            self._full = False
        self._ops += 1
        if self._ops % self._PRUNE_EVERY == 0:
            self._db.execute("DELETE FROM buckets WHERE ts < ?", (now - self._IDLE_S,))
        return 0.0 if granted else (cost - tokens) / rate

    def close(self) -> None:
        self._db.close()


# KEYS[1] bucket; ARGV rate, burst, now, cost. Returns the wait in ms (0: granted), as a string (float).
_TAKE = """
local rate = tonumber(ARGV[1]); local burst = tonumber(ARGV[2]); local now = tonumber(ARGV[3])
local cost = tonumber(ARGV[4]) or 1
local b = redis.call('hmget', KEYS[1], 't', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate) end
local wait = 0
if tokens >= cost then tokens = tokens - cost else wait = (cost - tokens) / rate end
redis.call('hset', KEYS[1], 't', tostring(tokens), 'ts', tostring(math.max(now, ts)))
redis.call('pexpire', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisBuckets:
    def __init__(self, redis: Any, prefix: str = RedisKeys().rate_limits) -> None:
        self._r = redis
        self._p = prefix

    async def take(self, key: str, rate: float, burst: int, now: float, cost: float = 1.0) -> float:
        return float(await self._r.eval(_TAKE, 1, self._p + key, rate, burst, now, cost))


class RateLimiter:
    def __init__(self, config: RateLimitConfig, buckets: Buckets, trusted_proxies: Sequence[str] = ()) -> None:
        self._config = config
        self._buckets = buckets
        self._proxies = parse_networks(trusted_proxies)

    async def enforce(self, request: web.Request, kind: Kind, wallet: str = "", *, cost: float = 1.0) -> None:
        """Raise 429 with Retry-After when the client address or the wallet is over its rate.

        A request's address bucket of one kind is taken once (the middleware may have taken it
        already); ``upload_bytes`` is charged ``cost`` bytes each call, as a body arrives."""
        c = self._config
        if not c.enabled:
            return
        rate, burst = (c.api_per_second, c.api_burst) if kind == "api" else (c.upload_per_second, c.upload_burst)
        if kind == "upload_bytes":  # a bucket of bytes holding one second's worth; 0: no cap
            rate = burst = int(c.upload_bytes_per_second)
            if rate <= 0:
                return
        now = time.time()
        keys = []
        taken = request.get(_ADDRESS_TAKEN)
        if taken is None:
            taken = request[_ADDRESS_TAKEN] = set()
        if kind == "upload_bytes" or kind not in taken:
            taken.add(kind)
            keys.append(f"{kind}:addr:{client_address(request, self._proxies)}")
        if wallet:
            keys.append(f"{kind}:wallet:{wallet.lower()}")
        for key in keys:
            wait = await self._buckets.take(key, rate, burst, now, cost)
            if wait > 0:
                who = "wallet" if ":wallet:" in key else "client address"
                raise HTTPError(429, "rate limited",
                                f"too many {kind} requests from this {who}; retry later",
                                {"Retry-After": str(max(1, math.ceil(wait)))})


async def enforce(request: web.Request, kind: Kind, wallet: str = "", *, cost: float = 1.0) -> None:
    await request.app[RATE_LIMITER].enforce(request, kind, wallet, cost=cost)


def _kind(method: str, path: str) -> Kind | None:
    """Which bucket a request draws on before its handler runs; None: not limited here (health
    checks, metrics scrapes, playback, the web UI's files, and tus PATCH/HEAD: an upload's bytes
    are limited by ``upload_bytes``, never its requests as such: issue 17)."""
    if path.startswith("/api/v1/uploads"):
        return "upload" if method == "POST" else "api" if method == "DELETE" else None
    if path.startswith(("/api/v1/videos", "/api/v1/auth/", "/api/v1/web/")):
        return "api"
    return None


@web.middleware
async def limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The address bucket, before the handler reads any token."""
    # tus 1.0: a POST with X-HTTP-Method-Override is that method (a PATCH is no creation).
    method = request.headers.get("X-HTTP-Method-Override", request.method).upper()
    kind = _kind(method, request.path)
    if kind is not None and request.method != "OPTIONS":  # CORS preflights and tus discovery
        try:
            await enforce(request, kind)
        except HTTPError as exc:
            if kind == "upload":
                exc.headers.setdefault("Tus-Resumable", "1.0.0")  # tus 1.0: on every response
            raise
    return await handler(request)
