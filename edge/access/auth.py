"""Sign-In with Ethereum (EIP-4361 + EIP-191 personal_sign) and the bearer tokens it issues.

``GET /api/v1/auth/nonce`` -> ``{"nonce"}`` (single use, expiring); ``POST /api/v1/auth/verify``
``{"message", "signature"}`` -> ``{"token", "address", "expires_at"}``. Writes call
:func:`require_writer`; reads that depend on the caller call :func:`identity`.
"""

from __future__ import annotations

import secrets
import string
import time
from datetime import UTC, datetime, timedelta

import msgspec
from aiohttp import web

from streamgate.common.config import Config
from streamgate.edge import stores
from streamgate.edge.access.origin import PUBLIC_ORIGIN, uri_matches
from streamgate.edge.access.ratelimit import enforce
from streamgate.edge.access.siwe import MalformedMessage, parse_message, recover_signer
from streamgate.edge.access.tokens import BadToken, Claims
from streamgate.edge.errors import HTTPError
from streamgate.edge.keys import CONFIG

# A client clock a little ahead of ours is not an attack.
CLOCK_SKEW = timedelta(seconds=60)
_ALPHANUMERIC = string.ascii_letters + string.digits
_IDENTITY = web.RequestKey("streamgate_identity", str)


class VerifyRequest(msgspec.Struct):
    message: str
    signature: str


_verify_decoder = msgspec.json.Decoder(VerifyRequest)


def identity(request: web.Request) -> str:
    """The wallet address of a valid bearer token, "" without one; a bad token is a 401."""
    # .get, not "in": the playback fast path hands a minimal request view (edge/fastpath/protocol.py).
    cached = request.get(_IDENTITY)
    if cached is not None:
        return cached
    header = request.headers.get("Authorization", "")
    address = ""
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPError(401, "unauthorized", "Authorization must be 'Bearer <token>'",
                            {"WWW-Authenticate": "Bearer"})
        try:
            address = request.app[stores.SIGNER].verify(token.strip(), "session").sub
        except BadToken as exc:
            raise HTTPError(401, "unauthorized", str(exc),
                            {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
    request[_IDENTITY] = address
    return address


def require_writer(request: web.Request) -> str:
    """The caller's wallet; 401 when sign-in is required and there is no valid token."""
    address = identity(request)
    if not address and request.app[CONFIG].auth.required:
        raise HTTPError(401, "unauthorized", "sign in with Ethereum first (POST /api/v1/auth/verify)",
                        {"WWW-Authenticate": "Bearer"})
    return address


async def nonce(request: web.Request) -> web.Response:
    await enforce(request, "api")
    value = "".join(secrets.choice(_ALPHANUMERIC) for _ in range(17))  # EIP-4361: >= 8 alphanumerics
    await request.app[stores.NONCES].issue(value, float(request.app[CONFIG].auth.nonce_ttl))
    return web.json_response({"nonce": value}, headers={"Cache-Control": "no-store"})


def _fail(detail: str) -> HTTPError:
    return HTTPError(401, "sign-in failed", detail)


async def verify(request: web.Request) -> web.Response:
    await enforce(request, "api")
    config: Config = request.app[CONFIG]
    try:
        body = _verify_decoder.decode(await request.read())
        message = parse_message(body.message)
    except msgspec.DecodeError as exc:
        raise HTTPError(400, "bad request", f'expected JSON {{"message", "signature"}}: {exc}') from None
    except MalformedMessage as exc:
        raise HTTPError(400, "bad request", str(exc)) from None
    if recover_signer(body.message, body.signature) != message.address:
        raise _fail("the signature was not made by the message's address")
    # Checked against the configured origin, never the request's Host (edge/access/origin.py).
    origin = request.app[PUBLIC_ORIGIN]
    if message.domain.lower() not in origin.domains:
        raise _fail(f"the message is for domain {message.domain!r}, this service is {origin.domains[0]!r}")
    if not uri_matches(origin, message.uri):
        raise _fail(f"the message's URI is not under this service's origin {origin.origins[0]!r}")
    if message.chain_id not in config.auth.chain_ids:
        raise _fail(f"chain id {message.chain_id} is not accepted (accepted: {config.auth.chain_ids})")
    now = datetime.now(UTC)
    if message.issued_at > now + CLOCK_SKEW:
        raise _fail("the message is issued in the future")
    if message.issued_at < now - timedelta(seconds=float(config.auth.nonce_ttl)) - CLOCK_SKEW:
        raise _fail("the message was issued too long ago; ask for a new nonce")
    if message.expiration_time is not None and message.expiration_time <= now:
        raise _fail("the message has expired")
    if message.not_before is not None and message.not_before > now + CLOCK_SKEW:
        raise _fail("the message is not valid yet")
    # Taken last and only once: a replayed message finds its nonce gone (EIP-4361 "Replay attacks").
    if not await request.app[stores.NONCES].take(message.nonce):
        raise _fail("unknown, expired or already used nonce")
    expires_at = time.time() + float(config.auth.token_ttl)
    token = request.app[stores.SIGNER].sign(Claims(kind="session", sub=message.address, exp=expires_at))
    return web.json_response({
        "token": token, "address": message.address,
        "expires_at": datetime.fromtimestamp(expires_at, UTC).isoformat().replace("+00:00", "Z"),
    }, headers={"Cache-Control": "no-store"})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/auth/nonce", nonce)
    app.router.add_post("/api/v1/auth/verify", verify)
