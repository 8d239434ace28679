"""The whole Redis key space of a fleet, under one configured prefix (``cache.redis_prefix``).

Every part that keeps state in the shared Redis takes its namespace from here, so one prefix
separates two fleets (or a test) sharing a server, and ``SCAN MATCH <prefix>*`` finds everything
StreamGate owns:

| namespace | keys | who |
|---|---|---|
| ``<p>`` | ``video:<id>``, ``videos``, ``upload:<id>``, ``nonce:<n>`` | catalog, upload state, nonces |
| ``<p>rl:`` | one token bucket per client and class | rate limits |
| ``<p>hot:`` | small media objects with a TTL | the edges' hot tier |
| ``<p>broker`` | the broker's job journal and fencing epoch | broker failover |
"""

from __future__ import annotations

import msgspec

DEFAULT_PREFIX = "sg:"


class RedisKeys(msgspec.Struct, frozen=True):
    prefix: str = DEFAULT_PREFIX

    @property
    def records(self) -> str:
        """Catalog, upload state and nonces (their own key names never collide)."""
        return self.prefix

    @property
    def rate_limits(self) -> str:
        return f"{self.prefix}rl:"

    @property
    def hot(self) -> str:
        return f"{self.prefix}hot:"

    @property
    def broker(self) -> str:
        return f"{self.prefix}broker"
