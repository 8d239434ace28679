"""JSON errors: every failure the edge answers is ``{"error": ..., "detail": ...}`` with its status."""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Awaitable, Callable

from aiohttp import ClientPayloadError, web

from streamgate.edge.redact import strip_paths

log = logging.getLogger("streamgate.edge")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HTTPError(Exception):
    """Raised by handlers; ``error_middleware`` turns it into a JSON response."""

    def __init__(self, status: int, error: str, detail: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}

    def response(self) -> web.Response:
        return json_response(self.status, self.error, self.detail, self.headers)


def json_response(status: int, error: str, detail: str = "",
                  headers: dict[str, str] | None = None) -> web.Response:
    # The one boundary every error detail crosses: no server path leaves the edge (issue 14).
    return web.json_response({"error": error, "detail": strip_paths(detail)}, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HTTPError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return json_response(exc.status, exc.reason.lower(), exc.text or "", headers)
    except ClientPayloadError as exc:
        # The body stopped (edge/bodies.py) or broke off: the client's doing, never an ERROR.
        log.info("%s %s: request body failed: %s", request.method, request.path, exc)
        return json_response(408, "request timeout", "the request body stopped arriving",
                             {"Connection": "close"})
    except ConnectionError:
        transport = request.transport
        if transport is not None and not transport.is_closing():
            log.exception("unhandled error on %s %s", request.method, request.path)
            return json_response(500, "internal error", "the edge failed to answer; see its log")
        # The client went away mid-answer: its doing, not a fault (issue 14); aiohttp closes.
        log.debug("client gone during %s %s", request.method, request.path)
        raise
    except Exception as exc:
        if _state_store_down(exc):
            # Redis (a fleet's upload state, locks, catalog) is unreachable: retry, not a fault here.
            log.warning("%s %s: state store unreachable: %s", request.method, request.path, exc)
            return json_response(503, "service unavailable", "the state store is unreachable; retry shortly",
                                 {"Retry-After": "1"})
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # The data dir is full (a file or a SQLite commit): the client may retry later.
            log.error("%s %s: disk full: %s", request.method, request.path, exc)
            return json_response(507, "insufficient storage", "the node's disk is full; retry later",
                                 {"Retry-After": "60"})
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response(500, "internal error", "the edge failed to answer; see its log")


def _state_store_down(exc: BaseException) -> bool:
    """A Redis connection or timeout error (only looked up when redis is loaded: a fleet edge)."""
    exceptions = sys.modules.get("redis.exceptions")
    return exceptions is not None and isinstance(exc, (exceptions.ConnectionError, exceptions.TimeoutError))
