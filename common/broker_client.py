"""``BrokerClient``: how edges, the control plane and the CLI talk to the farm broker (asyncio).

Requests go over a DEALER with a ``request_id`` in every message (the broker echoes it), so a
reply that arrives after its request was abandoned is recognised and dropped. A broker that does
not answer within ``timeout_s`` raises :class:`BrokerUnavailable` promptly; the socket is then
closed and a fresh one made for the next request (the ZeroMQ guide's Lazy Pirate), so nothing
stale is delivered later. Requests from many tasks share the client and go one at a time (the
broker answers in well under a millisecond); waiting for the turn counts toward the timeout.

Events come from the broker's PUB socket through :meth:`BrokerClient.events`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar, cast

import msgspec
import zmq
import zmq.asyncio

from streamgate.common.config import BrokerEndpoints
from streamgate.common.protocol import (
    CLIENT,
    TICK_TOPIC,
    TOPIC_PREFIX,
    Cancel,
    CancelReply,
    ClientReply,
    ClientRequest,
    ErrorReply,
    Event,
    FarmStats,
    GetStats,
    JobEvent,
    JobInfo,
    JobReply,
    JobSpec,
    Query,
    StatsReply,
    Submit,
    SubmitReply,
    Tick,
    encode,
)

log = logging.getLogger("streamgate.common.broker_client")

R = TypeVar("R")


class BrokerUnavailable(Exception):
    """The broker did not answer within the client's timeout (down, restarting or overloaded)."""


class BrokerError(Exception):
    """The broker answered with an error (a request it could not decode)."""


class BrokerClient:
    def __init__(self, endpoints: BrokerEndpoints, *, timeout_s: float = 5.0) -> None:
        self.endpoints = endpoints
        self.timeout_s = timeout_s
        self._ctx = zmq.asyncio.Context()
        self._sock: zmq.asyncio.Socket | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._decoder = msgspec.msgpack.Decoder(ClientReply)
        self._streams: set[EventStream] = set()
        self._closed = False

    # -- requests ------------------------------------------------------------------------------

    async def submit(self, job: JobSpec) -> SubmitReply:
        """Queue ``job``; ``accepted`` False with ``reason`` (e.g. "queue full") when refused.

        Idempotent by ``job_id``: a job already queued, running or done is acknowledged again."""
        return await self._request(lambda rid: Submit(request_id=rid, job=job), SubmitReply)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False when it is unknown or already finished."""
        reply = await self._request(lambda rid: Cancel(request_id=rid, job_id=job_id), CancelReply)
        return reply.cancelled

    async def job(self, job_id: str) -> JobInfo | None:
        reply = await self._request(lambda rid: Query(request_id=rid, job_id=job_id), JobReply)
        return reply.info

    async def stats(self) -> FarmStats:
        reply = await self._request(lambda rid: GetStats(request_id=rid), StatsReply)
        return reply.stats

    async def _request(self, make: Callable[[int], ClientRequest], kind: type[R]) -> R:
        if self._closed:
            raise BrokerUnavailable("the broker client is closed")
        request_id = next(self._ids)
        request = make(request_id)
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._lock:
                    sock = self._socket()
                    await sock.send_multipart([CLIENT, encode(request)])
                    while True:
                        frames = await sock.recv_multipart()
                        if len(frames) != 2 or frames[0] != CLIENT:
                            continue
                        try:
                            reply = self._decoder.decode(frames[1])
                        except msgspec.DecodeError:
                            continue
                        if reply.request_id == request_id:
                            break
                        # A late reply to a request that timed out earlier: not ours, drop it.
        except TimeoutError:
            self._reset()
            raise BrokerUnavailable(
                f"farm broker at {self.endpoints.frontend} did not answer within {self.timeout_s:g}s"
            ) from None
        if isinstance(reply, ErrorReply):
            raise BrokerError(reply.reason)
        if not isinstance(reply, kind):
            raise BrokerError(f"expected {kind.__name__}, got {type(reply).__name__}")
        return reply

    async def retarget(self, endpoints: BrokerEndpoints) -> None:
        """Talk to another broker from the next request on (a new leader after a failover).

        Event streams opened before keep their publisher; they fall silent and raise
        :class:`BrokerUnavailable`, and the subscriber's next :meth:`events` uses the new one."""
        async with self._lock:  # not under a request in flight
            if endpoints != self.endpoints:
                log.info("farm broker moved: %s -> %s", self.endpoints.frontend, endpoints.frontend)
                self.endpoints = endpoints
                self._reset()

    def _socket(self) -> zmq.asyncio.Socket:
        if self._sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            # Queue nothing for a broker we are not connected to: a send waits (and times out)
            # instead of delivering a stale request when the broker comes back.
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.connect(self.endpoints.frontend)
            self._sock = sock
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    # -- events --------------------------------------------------------------------------------

    def events(self, *, ticks: bool = False, silence_s: float | None = None) -> EventStream:
        """The broker's job events (queued, started, progress, done, failed, cancelled).

        Use as ``async with client.events() as stream: await stream.live(); async for ev in stream``.
        PUB/SUB drops what a subscriber misses (before it is connected, or while the broker is
        down): after :meth:`EventStream.live`, query a job to learn anything that came before.
        The broker ticks every heartbeat; a stream that hears nothing for ``silence_s`` (default:
        the larger of the client's timeout and 5 s) raises :class:`BrokerUnavailable`, so the
        subscriber can resubscribe and catch up by query once the broker is back.
        """
        stream = EventStream(self, ticks=ticks,
                             silence_s=silence_s if silence_s is not None else max(self.timeout_s, 5.0))
        self._streams.add(stream)
        return stream

    async def close(self) -> None:
        self._closed = True
        for stream in list(self._streams):
            await stream.close()
        self._reset()
        self._ctx.destroy(linger=0)


class EventStream:
    """A SUB socket on the broker's events; an async iterator of :data:`JobEvent`."""

    def __init__(self, client: BrokerClient, *, ticks: bool = False, silence_s: float = 5.0) -> None:
        self._client = client
        self._ticks = ticks
        self._silence_s = silence_s
        self._decoder = msgspec.msgpack.Decoder(Event)
        sock = client._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, TOPIC_PREFIX)
        sock.setsockopt(zmq.SUBSCRIBE, TICK_TOPIC)
        sock.connect(client.endpoints.publisher)
        self._sock: zmq.asyncio.Socket | None = sock
        self._early: list[JobEvent] = []

    async def live(self, timeout_s: float | None = None) -> None:
        """Wait for the broker's first tick: from then on this stream receives every event."""
        try:
            async with asyncio.timeout(timeout_s or self._client.timeout_s):
                while True:
                    event = await self._next()
                    if isinstance(event, Tick):
                        return
                    self._early.append(event)
        except TimeoutError:
            raise BrokerUnavailable(
                f"no events from the farm broker at {self._client.endpoints.publisher}"
            ) from None

    async def _next(self) -> Event:
        while True:
            if self._sock is None:
                raise StopAsyncIteration
            frames = await self._sock.recv_multipart()
            if len(frames) != 2:
                continue
            try:
                return self._decoder.decode(frames[1])
            except msgspec.DecodeError as exc:
                log.warning("dropped an undecodable broker event: %s", exc)

    def __aiter__(self) -> AsyncIterator[JobEvent]:
        return self

    async def __anext__(self) -> JobEvent:
        if self._early:
            return self._early.pop(0)
        while True:
            try:
                async with asyncio.timeout(self._silence_s):
                    event = await self._next()
            except TimeoutError:
                raise BrokerUnavailable(
                    f"no events from the farm broker at {self._client.endpoints.publisher}"
                    f" for {self._silence_s:g}s"
                ) from None
            if not isinstance(event, Tick) or self._ticks:
                return cast(JobEvent, event)  # a Tick only for a stream asked for ticks

    async def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        self._client._streams.discard(self)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
