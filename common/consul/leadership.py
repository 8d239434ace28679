"""A leader lock in Consul: a KV key acquired with a session (Consul's "leader election" pattern).

The session is bound to the candidate's own service check (plus the agent's ``serfHealth``), so it
is invalidated, and the lock released, when that check turns critical: a killed or wedged
broker stops refreshing its TTL check and loses the lock about one TTL later, with no session
TTL to renew. After an invalidation Consul refuses the key to everyone for the session's
lock-delay (``control.broker_lock_delay``), which lets a deposed leader notice before a new one
acts. A clean release (``?release=``) has no lock-delay: the standby takes over at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from consul import ConsulException

from streamgate.common.consul.client import ConsulClient
from streamgate.common.consul.registry import CONSUL_ERRORS, REQUEST_TIMEOUT_S

log = logging.getLogger("streamgate.leadership")


class LeadershipLost(Exception):
    """The lock is no longer ours (session invalidated, or the key was taken)."""


class LeaderLock:
    def __init__(self, client: ConsulClient, key: str, *, check_id: str, holder: str,
                 lock_delay_s: float = 1.0, wait_s: float = 30.0) -> None:
        self.client = client
        self.key = key
        self.check_id = check_id
        self.holder = holder  # the value written to the key: who leads (for operators and status)
        self.lock_delay_s = lock_delay_s
        self.wait_s = wait_s
        self.session: str | None = None

    async def create_session(self, stop: asyncio.Event) -> str | None:
        """A session bound to our check; retried until the check exists and is not critical."""
        backoff = 0.2
        while not stop.is_set():
            try:
                self.session = await asyncio.wait_for(self.client.session.create(
                    name=f"streamgate leader lock {self.key} for {self.holder}",
                    checks=["serfHealth", self.check_id], behavior="release",
                    lock_delay=int(round(self.lock_delay_s))), REQUEST_TIMEOUT_S)
                return self.session
            except CONSUL_ERRORS as exc:
                # Usually our service is not registered yet (the runner registers after ready).
                log.info("no leader session yet (%s: %s); retrying in %.1fs", type(exc).__name__, exc, backoff)
            try:
                await asyncio.wait_for(stop.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, 5.0)
        return None

    async def try_acquire(self) -> bool:
        assert self.session is not None
        return bool(await asyncio.wait_for(
            self.client.kv.put(self.key, self.holder, acquire=self.session), REQUEST_TIMEOUT_S))

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Block until the lock is ours (True) or ``stop`` is set (False)."""
        index = None
        entry: dict[str, Any] | None = None
        while not stop.is_set():
            try:
                if await self.try_acquire():
                    log.info("took the leader lock %s as %s", self.key, self.holder)
                    return True
                if entry is not None and self._held_by_our_past(entry):
                    # A previous run of this candidate (killed, restarted by systemd within one
                    # check TTL, so its check never went critical) still holds the lock through
                    # its session: nobody runs that session any more, so end it ourselves.
                    log.warning("the leader lock %s is held by session %s of a previous run of %s; "
                                "destroying it", self.key, entry["Session"], self.holder)
                    await asyncio.wait_for(self.client.session.destroy(entry["Session"]), REQUEST_TIMEOUT_S)
                    index, entry = None, None
                    continue
                if entry is not None and not entry.get("Session"):
                    # Refused although free: the lock-delay after an invalidation. Retry after it.
                    await self._pause(stop, self.lock_delay_s)
                    index, entry = None, None
                    continue
                # Held: wait for the key to change (a blocking query), then try again.
                index, entry = await asyncio.wait_for(
                    self.client.kv.get(self.key, index=index, wait=f"{self.wait_s:g}s"), self.wait_s + 10)
            except CONSUL_ERRORS as exc:
                if isinstance(exc, ConsulException) and "invalid session" in str(exc).lower():
                    raise LeadershipLost(f"our session is gone: {exc}") from None
                log.warning("leader lock %s: %s: %s; retrying", self.key, type(exc).__name__, exc)
                index, entry = None, None
                await self._pause(stop, 1.0)
        return False

    def _held_by_our_past(self, entry: dict[str, Any]) -> bool:
        value = entry.get("Value")
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        held = entry.get("Session")
        return bool(held) and held != self.session and value == self.holder

    async def watch_lost(self, stop: asyncio.Event) -> None:
        """Return when ``stop`` is set; raise :class:`LeadershipLost` when the key leaves our session."""
        index = None
        failures = 0
        while not stop.is_set():
            try:
                index, entry = await asyncio.wait_for(
                    self.client.kv.get(self.key, index=index, wait=f"{self.wait_s:g}s"), self.wait_s + 10)
                failures = 0
            except CONSUL_ERRORS as exc:
                # Without Consul we cannot know; the session's own check will decide for Consul.
                failures += 1
                log.warning("leader lock %s unobservable (%s: %s)", self.key, type(exc).__name__, exc)
                index = None
                await self._pause(stop, min(0.5 * 2 ** failures, 5.0))
                continue
            if entry is None or entry.get("Session") != self.session:
                raise LeadershipLost(f"the lock {self.key} is no longer held by session {self.session}")

    async def release(self) -> None:
        """Give the lock up (no lock-delay for the successor) and destroy the session."""
        if self.session is None:
            return
        try:
            await asyncio.wait_for(self.client.kv.put(self.key, self.holder, release=self.session),
                                   REQUEST_TIMEOUT_S)
            await asyncio.wait_for(self.client.session.destroy(self.session), REQUEST_TIMEOUT_S)
        except CONSUL_ERRORS as exc:
            log.warning("could not release the leader lock %s: %s: %s", self.key, type(exc).__name__, exc)
        self.session = None

    @staticmethod
    async def _pause(stop: asyncio.Event, seconds: float) -> None:
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except TimeoutError:
            pass
