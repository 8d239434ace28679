"""The broker's journal in Redis, for a fleet's failover brokers (control plane, issue 7).

Implements :class:`~.journal.Journal` (the five methods the broker calls) over keys shared by both
brokers, so the standby that takes the leadership lock recovers exactly the jobs the old leader
accepted: queued ones are queued again, running ones wait for their worker to re-adopt them
(farm/broker.py ``start``), terminal ones answer queries and resubmits.

Keys under ``<prefix>`` (``streamgate:broker`` by default)::

    <prefix>:jobs    hash   job_id -> msgpack JobRecord
    <prefix>:states  hash   job_id -> state (read by the save script without decoding records)
    <prefix>:active  zset   job_id -> acceptance order, for the non-terminal jobs
    <prefix>:totals  hash   done, failed, done_seconds
    <prefix>:seq     int    acceptance counter
    <prefix>:epoch   int    the leadership epoch (fencing token)
    <prefix>:finished zset  job_id -> when it became terminal, for pruning (broker.journal_retention)

Each save is one Lua script, so a record, its state, the active set and the totals change
together. **Fencing**: a leader takes a new epoch (``INCR <prefix>:epoch``) when it wins the lock
and every save checks it; a deposed leader that has not noticed yet gets :class:`Fenced` instead
of overwriting its successor's state (Kleppmann's fencing tokens). Durability is Redis's: run it
with ``appendonly yes`` and ``appendfsync always`` (or ``everysec`` and accept up to a second).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from streamgate.common.redis_keys import RedisKeys
from streamgate.farm.journal import JobRecord, Totals


class Fenced(Exception):
    """This broker's leadership epoch is no longer the current one: it must stop writing."""


_SAVE = """
local epoch = ARGV[5]
if epoch ~= '' and redis.call('GET', KEYS[6]) ~= epoch then
  return redis.error_reply('FENCED epoch ' .. epoch .. ' is not ' .. tostring(redis.call('GET', KEYS[6])))
end
local job_id, state = ARGV[1], ARGV[3]
local old = redis.call('HGET', KEYS[2], job_id)
redis.call('HSET', KEYS[1], job_id, ARGV[2])
redis.call('HSET', KEYS[2], job_id, state)
if state == 'queued' or state == 'running' then
  if not redis.call('ZSCORE', KEYS[3], job_id) then
    redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[5]), job_id)
  end
  redis.call('ZREM', KEYS[7], job_id)
else
  redis.call('ZREM', KEYS[3], job_id)
  redis.call('ZADD', KEYS[7], ARGV[6], job_id)
  if old ~= state then
    if state == 'done' then
      redis.call('HINCRBY', KEYS[4], 'done', 1)
      redis.call('HINCRBYFLOAT', KEYS[4], 'done_seconds', ARGV[4])
    elseif state == 'failed' then
      redis.call('HINCRBY', KEYS[4], 'failed', 1)
    end
  end
end
return 1
"""

# Finished jobs changed before ARGV[1], at most ARGV[2] of them: gone from the record and state
# hashes and the finished set at once (their outcomes stay in the totals hash).
_PRUNE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then return 0 end
redis.call('HDEL', KEYS[1], unpack(ids))
redis.call('HDEL', KEYS[2], unpack(ids))
redis.call('ZREM', KEYS[3], unpack(ids))
return #ids
"""


class RedisJournal:
    """The broker journal in Redis; ``epoch`` (from :meth:`take_epoch`) fences a deposed leader."""

    def __init__(self, redis: Any, prefix: str = RedisKeys().broker, *, epoch: int | None = None,
                 owns_client: bool = False) -> None:
        self.redis = redis
        self.prefix = prefix
        self.epoch = epoch
        self._owns_client = owns_client
        self._keys = [f"{prefix}:{name}" for name in ("jobs", "states", "active", "totals", "seq", "epoch",
                                                        "finished")]
        self._save = redis.register_script(_SAVE)
        self._prune = redis.register_script(_PRUNE)
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(JobRecord).decode

    @classmethod
    def from_url(cls, url: str, prefix: str = RedisKeys().broker, *, epoch: int | None = None) -> RedisJournal:
        import redis.asyncio as redis

        return cls(redis.Redis.from_url(url), prefix, epoch=epoch, owns_client=True)

    async def take_epoch(self) -> int:
        """Start a new leadership epoch; saves of every earlier epoch are refused from now on."""
        self.epoch = int(await self.redis.incr(self._keys[5]))
        return self.epoch

    async def load_active(self) -> list[JobRecord]:
        ids = await self.redis.zrange(self._keys[2], 0, -1)
        if not ids:
            return []
        raw = await self.redis.hmget(self._keys[0], ids)
        return [self._decode(r) for r in raw if r is not None]

    async def get(self, job_id: str) -> JobRecord | None:
        raw = await self.redis.hget(self._keys[0], job_id)
        return self._decode(raw) if raw is not None else None

    def _args(self, record: JobRecord) -> list[Any]:
        record.updated_at = time.time()
        return [record.job_id, self._encode(record), record.state, repr(float(record.elapsed_s)),
                "" if self.epoch is None else str(self.epoch), repr(record.updated_at)]

    async def save(self, record: JobRecord) -> None:
        import redis.exceptions

        try:
            await self._save(keys=self._keys, args=self._args(record))
        except redis.exceptions.ResponseError as exc:
            if "FENCED" in str(exc):
                raise Fenced(f"broker epoch {self.epoch} was superseded: {exc}") from None
            raise

    async def save_many(self, records: list[JobRecord]) -> None:
        """One round trip (a MULTI of save scripts); with ``appendfsync always`` one fsync."""
        import redis.exceptions

        async with self.redis.pipeline(transaction=True) as pipe:
            for record in records:
                await self._save(keys=self._keys, args=self._args(record), client=pipe)
            try:
                results = await pipe.execute(raise_on_error=False)
            except redis.exceptions.ResponseError as exc:
                results = [exc]
        for result in results:
            if isinstance(result, Exception):
                if "FENCED" in str(result):
                    raise Fenced(f"broker epoch {self.epoch} was superseded: {result}")
                raise result

    async def totals(self) -> Totals:
        done, failed, seconds = await self.redis.hmget(self._keys[3], ["done", "failed", "done_seconds"])
        return Totals(done=int(done or 0), failed=int(failed or 0), done_seconds=float(seconds or 0.0))

    async def prune(self, before: float, *, limit: int = 1000) -> int:
        keys = [self._keys[0], self._keys[1], self._keys[6]]
        return int(await self._prune(keys=keys, args=[repr(float(before)), limit]))

    async def close(self) -> None:
        if self._owns_client:
            await self.redis.aclose()
