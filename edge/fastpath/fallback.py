"""aiohttp's protocol for every connection the fast path hands over (and every connection without it),
answering its own errors as the edge answers all others: JSON ``{"error", "detail"}``.

aiohttp's ``RequestHandler.handle_error`` answers a head its parser refuses with text that quotes
the offending bytes back (``Invalid header token: b'...'``) and logs an ERROR with a traceback for
each: a client's mistake (or a scanner) then reads as a server fault and fills the log (issue 14).
Here a 4xx is logged at debug and answered with a fixed detail per status; a 500 (a handler that
crashed) is still logged with its traceback, and says nothing of it to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("streamgate.edge.fastpath.fallback")

_DETAILS = {
    400: "the request is not valid HTTP/1.1 (RFC 9112)",
    413: "the request is too large",
    431: "the request's header fields are too large",
}


class JsonErrorHandler(RequestHandler):
    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        transport = request.transport
        gone = isinstance(exc, ConnectionError) and (transport is None or transport.is_closing())
        if status >= 500 and not gone:  # a client that went away mid-answer is no server fault
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            log.debug("refused a request from %s: %s", request.remote, exc)
        if request.writer.output_size > 0:  # as aiohttp: the answer is under way, the stream is broken
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        phrase = HTTPStatus(status).phrase.lower() if status in HTTPStatus._value2member_map_ else "error"
        if status >= 500:
            error, detail = "internal error", "the edge failed to answer; see its log"
        else:
            error, detail = phrase, _DETAILS.get(status, "the request was refused")
        response = web.json_response({"error": error, "detail": detail}, status=status)
        response.force_close()
        return response


def json_errors(server: web.Server) -> Callable[[], RequestHandler]:
    """A protocol factory like ``server`` itself (``web.Server.__call__``), making JsonErrorHandler."""
    # web.Server has no handler-class option; these are the arguments its __call__ passes.
    return lambda: JsonErrorHandler(server, loop=server._loop, **server._kwargs)
