"""Token buckets per client address and per wallet, for the API and for uploads (429 + Retry-After).

In-process on a single node; in Redis in a fleet, so a client cannot multiply its allowance by
spreading requests over edges. A bucket holds up to ``burst`` tokens and refills at ``rate``/s.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal, Protocol

from aiohttp import web

from streamgate.common.config import RateLimitConfig
from streamgate.common.redis_keys import RedisKeys
from streamgate.edge.errors import HTTPError

Kind = Literal["api", "upload", "upload_bytes"]
RATE_LIMITER: web.AppKey[RateLimiter] = web.AppKey("rate_limiter")


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
        return (cost - tokens) / rate

    def _prune(self, now: float, rate: float, burst: int) -> None:
        full_after = burst / rate if rate > 0 else math.inf
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}


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
    def __init__(self, config: RateLimitConfig, buckets: Buckets) -> None:
        self._config = config
        self._buckets = buckets

    async def enforce(self, request: web.Request, kind: Kind, wallet: str = "", *, cost: float = 1.0) -> None:
        """Raise 429 with Retry-After when the client address or the wallet is over its rate."""
        c = self._config
        if not c.enabled:
            return
        rate, burst = (c.api_per_second, c.api_burst) if kind == "api" else (c.upload_per_second, c.upload_burst)
        if kind == "upload_bytes":  # a bucket of bytes holding one second's worth; 0: no cap
            rate = burst = int(c.upload_bytes_per_second)
            if rate <= 0:
                return
        now = time.time()
        keys = [f"{kind}:addr:{request.remote or 'unknown'}"]
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
