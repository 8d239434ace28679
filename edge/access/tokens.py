"""Signed, expiring tokens: session tokens after Sign-In with Ethereum and playback-URL tokens.

Format: ``base64url(json claims) "." base64url(HMAC-SHA256(key, claims))``, no padding. Only
URL-safe characters, so a playback token can sit as one path segment (``/s/{token}/videos/...``).
Verification is a hash and a compare: cheap enough for the playback hot path.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import Literal

import msgspec

from streamgate.common.config import Config, ConfigError


class Claims(msgspec.Struct, kw_only=True, omit_defaults=True):
    kind: Literal["session", "play"]
    exp: float
    sub: str = ""  # session: the wallet address
    vid: str = ""  # play: the video the URL opens


class BadToken(Exception):
    """The token is malformed, forged, expired or of another kind; the message says which."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Claims).decode


class TokenSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()

    def sign(self, claims: Claims) -> str:
        body = _encode(claims)
        return f"{_b64(body)}.{_b64(self._mac(body))}"

    def verify(self, token: str, kind: str, now: float | None = None) -> Claims:
        try:
            body_text, mac_text = token.split(".")
            body, mac = _unb64(body_text), _unb64(mac_text)
        except ValueError:
            raise BadToken("malformed token") from None
        if not hmac.compare_digest(mac, self._mac(body)):
            raise BadToken("token signature does not verify")
        try:
            claims = _decode(body)
        except msgspec.DecodeError:
            raise BadToken("malformed token claims") from None
        if claims.kind != kind:
            raise BadToken(f"not a {kind} token")
        if claims.exp <= (time.time() if now is None else now):
            raise BadToken("token expired")
        return claims


def require_fleet_secret(config: Config) -> None:
    """In a fleet, ConfigError unless ``auth.secret`` is set or ``auth.secret_file`` exists.

    Every edge of a fleet must sign with the one secret: one made by an edge on its own would
    turn every other edge's tokens into 401s. ``streamgate edge`` checks it before it starts
    (exit 2); load_secret checks it again for edges built in-process.
    """
    if config.deployment.mode != "fleet" or config.auth.secret:
        return
    if not config.auth.secret_file:
        raise ConfigError("auth.secret / auth.secret_file: an edge in a fleet (deployment.mode: "
                          "fleet) needs the fleet's one signing secret; set auth.secret or "
                          "auth.secret_file (the Ansible roles write the same file to every edge)")
    path = config.auth_secret_file
    if not path.is_file():
        raise ConfigError(f"auth.secret_file: {path} does not exist; in a fleet it is made once "
                          "for all edges (or set auth.secret), never per host")


def load_secret(config: Config) -> bytes:
    """``auth.secret``, else the secret file, created once with mode 0600 (race-safe across edges)."""
    if config.auth.secret:
        return config.auth.secret.encode()
    require_fleet_secret(config)
    path: Path = config.auth_secret_file
    # Made here only when missing (a single node's first start): in a fleet the file is the one
    # the roles wrote, and its directory is read-only to the edge (ProtectSystem=strict).
    if not path.exists():
        _create_secret(path)
    secret = path.read_bytes().strip()
    if not secret:
        raise ValueError(f"{path}: the auth secret file is empty")
    return secret


def _create_secret(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path.with_suffix(".tmp" + secrets.token_hex(4)),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        tmp = Path(f"/proc/self/fd/{fd}").readlink()
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() fails if another edge won the race; its secret is then the one everyone uses.
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
