"""The CLI's side of the edge API: the server URL, a wallet key file and Sign-In with Ethereum.

A newcomer's first ``streamgate upload`` just works: when the server asks for a token (401), a
wallet key is read from ``~/.config/streamgate/wallet.key`` or created there (mode 0600), an
EIP-4361 message is signed with it (EIP-191 personal_sign) and the bearer token is used.
"""

from __future__ import annotations

import argparse
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from streamgate.common.config import Config
from streamgate.edge.access.siwe import SiweMessage, format_message

DEFAULT_WALLET = Path("~/.config/streamgate/wallet.key")
TIMEOUT_S = 30


class EdgeAPIError(Exception):
    """The edge answered with an error; the message carries its status and JSON detail."""


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", metavar="URL",
                        help="the edge (default: server.public_url, else http://127.0.0.1:<server.port>)")
    parser.add_argument("--wallet-key", metavar="FILE", default=str(DEFAULT_WALLET),
                        help=f"wallet key used to sign in when the server requires it (default: {DEFAULT_WALLET};"
                             " created with mode 0600 on first use)")


def server_url(args: argparse.Namespace, config: Config) -> str:
    return (args.server or config.server.public_url or f"http://127.0.0.1:{config.server.port}").rstrip("/")


def load_or_create_wallet(path: Path) -> Any:
    """The wallet at ``path``; a new one is written there first (0600, never overwritten)."""
    from eth_account import Account

    path = path.expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = "0x" + secrets.token_hex(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another CLI created it a moment ago: use that one
        else:
            with os.fdopen(fd, "w") as out:
                out.write(key + "\n")
    return Account.from_key(path.read_text().strip())


def siwe_text(domain: str, uri: str, address: str, nonce: str, chain_id: int = 1) -> str:
    """An EIP-4361 message in the edge's own format (edge/access/siwe.py parses what it builds)."""
    return format_message(SiweMessage(domain=domain, address=address, uri=uri, chain_id=chain_id,
                                      nonce=nonce, issued_at=datetime.now(UTC),
                                      statement="Sign in to StreamGate."))


class EdgeClient:
    """A requests session on the edge API that signs in on the first 401."""

    def __init__(self, base: str, wallet_key: Path) -> None:
        import requests

        self.base = base
        self.wallet_key = wallet_key
        self.session = requests.Session()
        self.token = ""
        self.address = ""

    def close(self) -> None:
        self.session.close()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def sign_in(self) -> str:
        from eth_account.messages import encode_defunct

        account = load_or_create_wallet(self.wallet_key)
        nonce = self._json("GET", "/api/v1/auth/nonce", auth=False)["nonce"]
        parts = urlsplit(self.base)
        message = siwe_text(parts.netloc, self.base + "/", account.address, nonce)
        signature = account.sign_message(encode_defunct(text=message)).signature.hex()
        body = self._json("POST", "/api/v1/auth/verify", auth=False,
                          json={"message": message, "signature": "0x" + signature.removeprefix("0x")})
        self.token, self.address = body["token"], body["address"]
        return self.address

    def _json(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> Any:
        response = self.request(method, path, auth=auth, **kwargs)
        return response.json() if response.content else None

    def request(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> Any:
        response = self.session.request(method, self.base + path, headers=self.headers,
                                        timeout=TIMEOUT_S, **kwargs)
        if response.status_code == 401 and auth and not self.token:
            self.sign_in()
            response = self.session.request(method, self.base + path, headers=self.headers,
                                            timeout=TIMEOUT_S, **kwargs)
        if response.status_code >= 400:
            try:
                error = response.json()
                detail = f"{error.get('error')}: {error.get('detail')}"
            except ValueError:
                detail = response.text[:200]
            raise EdgeAPIError(f"{method} {path}: {response.status_code} {detail}")
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._json(method, path, **kwargs)
