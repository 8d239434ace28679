"""Helpers and fixtures for the edge-intake tests (issue 6): configs, in-process edges, wallets.

Test modules import the fixtures by name (``from intake_support import edge, ...``).
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from conftest import free_port

from streamgate.common.config import Config, config_from_tree

TUS = {"Tus-Resumable": "1.0.0"}


def make_config(data_dir: Path, *, redis_url: str = "", auth_required: bool = False,
                rate_limit: dict[str, Any] | None = None, uploads: dict[str, Any] | None = None,
                auth: dict[str, Any] | None = None, server: dict[str, Any] | None = None) -> Config:
    # The edge fixture listens on server.port, and public_url is where the tests reach it: the
    # SIWE domain and the base of the URLs it builds (edge/access/origin.py).
    port = free_port()
    return config_from_tree({
        "storage": {"data_dir": str(data_dir)},
        "server": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}", **(server or {})},
        "cache": {"redis_url": redis_url},
        "auth": {"required": auth_required, **(auth or {})},
        "uploads": {"resubmit_interval": "1h", "sweep_interval": "1h", **(uploads or {})},
        "edge": {"rate_limit": rate_limit or {"enabled": False}},
    })


class Edge:
    """An in-process edge (aiohttp TestServer around build_app) and a client session to it."""

    def __init__(self, server: TestServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.app = server.app
        self.url = str(server.make_url("")).rstrip("/")


@pytest.fixture
async def edge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., Awaitable[Edge]]]:
    """Factory: ``await edge(config=None, **make_config kwargs)`` -> a running in-process edge."""
    from streamgate.edge.app import build_app

    started: list[Edge] = []

    async def start(config: Config | None = None, **kwargs: Any) -> Edge:
        config = config or make_config(tmp_path / "data", **kwargs)
        server = TestServer(build_app(config), host="127.0.0.1",
                            port=config.server.port if config.server.host == "127.0.0.1" else None)
        await server.start_server()
        running = Edge(server, aiohttp.ClientSession())
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        await running.session.close()
        await running.server.close()


def siwe_message(address: str, nonce: str, *, domain: str, chain_id: int = 1,
                 issued_at: datetime | None = None, expires_in: timedelta | None = None) -> str:
    """An EIP-4361 message built by the reference ``siwe`` package."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # siwe's ABNF grammar and web3 warn at import
        from siwe import SiweMessage

    issued = issued_at or datetime.now(UTC)
    fields: dict[str, Any] = {
        "domain": domain, "address": address, "uri": f"http://{domain}/", "version": "1",
        "chain_id": chain_id, "nonce": nonce, "statement": "Sign in to StreamGate.",
        "issued_at": issued.isoformat().replace("+00:00", "Z"),
    }
    if expires_in is not None:
        fields["expiration_time"] = (issued + expires_in).isoformat().replace("+00:00", "Z")
    return SiweMessage(**fields).prepare_message()


def personal_sign(account: Any, text: str) -> str:
    from eth_account.messages import encode_defunct

    return "0x" + account.sign_message(encode_defunct(text=text)).signature.hex().removeprefix("0x")


def new_account() -> Any:
    from eth_account import Account

    return Account.create()


async def sign_in(edge: Edge, account: Any, **message_kwargs: Any) -> str:
    """Nonce, a siwe message signed with personal_sign, verify: the bearer token."""
    async with edge.session.get(edge.url + "/api/v1/auth/nonce") as r:
        assert r.status == 200, await r.text()
        nonce = (await r.json())["nonce"]
    message_kwargs.setdefault("domain", edge.url.split("://", 1)[1])
    message = siwe_message(account.address, nonce, **message_kwargs)
    async with edge.session.post(edge.url + "/api/v1/auth/verify",
                                 json={"message": message, "signature": personal_sign(account, message)}) as r:
        body = await r.json()
        assert r.status == 200, body
    return body["token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
