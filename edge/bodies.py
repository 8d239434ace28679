"""An idle timeout on request bodies, for every aiohttp route (issue 14).

aiohttp times out idle keep-alive connections but not a body that stops arriving: a client that
sends half a PATCH and then nothing would hold the upload's lock for ever, and a thousand
trickling clients would hold a thousand handlers. Every request that has a body gets a watchdog:
when no byte arrives for ``edge.client_timeout`` (or ``server.read_timeout``) it fails the body
with ``ClientPayloadError``, which the handler sees as a client that went away (the tus handler
keeps what it stored and releases the lock); aiohttp then closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiohttp import ClientPayloadError, web
from aiohttp.typedefs import Middleware

log = logging.getLogger("streamgate.edge.bodies")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BodyIdle(ClientPayloadError):
    """No byte of the request body arrived within the idle timeout."""


async def _watch(request: web.Request, idle_s: float) -> bool:
    """True once it failed the body; False when the body ended in time."""
    content = request.content
    seen = -1
    while not content.is_eof():
        if content.total_bytes == seen and not content._buffer:  # noqa: SLF001 - nothing arrived, nothing unread
            # Fail the body, not the connection: the handler must finish (the tus handler saves the
            # offset it reached and releases the lock) before aiohttp closes the connection, which
            # it does after the answer since the body was never read to its end.
            log.info("%s %s: no body byte for %.0f s", request.method, request.path, idle_s)
            content.set_exception(BodyIdle(f"no body byte for {idle_s:g} s"))
            return True
        seen = content.total_bytes
        await asyncio.sleep(idle_s)
    return False


def body_idle_middleware(idle_s: float) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.body_exists or idle_s <= 0:
            return await handler(request)
        watchdog = asyncio.create_task(_watch(request, idle_s), name="body-idle-watchdog")
        try:
            response = await handler(request)
        finally:
            watchdog.cancel()
            fired = False
            with contextlib.suppress(asyncio.CancelledError):
                fired = await watchdog
        if fired:
            # The rest of the body never comes: close after this answer (a keep-alive would read
            # the trickle as the next request), and mark the body ended so aiohttp does not
            # linger reading it (it would meet the failure and log it as unhandled).
            response.force_close()
            request.content.feed_eof()
        return response
    return middleware
