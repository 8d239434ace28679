"""Sign-In with Ethereum against an in-process edge: real keys (eth-account), real messages (siwe)."""

from __future__ import annotations

import stat
import time
from datetime import UTC, datetime, timedelta

from intake_support import TUS, bearer, edge, new_account, personal_sign, sign_in, siwe_message  # noqa: F401

from streamgate.edge import stores
from streamgate.edge.access.tokens import Claims
from streamgate.edge.keys import CONFIG


async def _nonce(e) -> str:  # type: ignore[no-untyped-def]
    async with e.session.get(e.url + "/api/v1/auth/nonce") as r:
        assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
        return (await r.json())["nonce"]


async def _verify(e, message: str, signature: str) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    async with e.session.post(e.url + "/api/v1/auth/verify",
                              json={"message": message, "signature": signature}) as r:
        return r.status, await r.json()


def _host(e) -> str:  # type: ignore[no-untyped-def]
    return e.url.split("://", 1)[1]


async def _create_upload(e, headers: dict[str, str]) -> int:  # type: ignore[no-untyped-def]
    async with e.session.post(e.url + "/api/v1/uploads",
                              headers={**TUS, "Upload-Length": "3", **headers}) as r:
        return r.status


async def test_sign_in_gives_a_token_that_makes_the_wallet_the_owner(edge) -> None:  # noqa: F811
    e = await edge(auth_required=True)
    account = new_account()
    assert await _create_upload(e, {}) == 401
    nonce = await _nonce(e)
    message = siwe_message(account.address, nonce, domain=_host(e))
    status, body = await _verify(e, message, personal_sign(account, message))
    assert status == 200, body
    assert body["address"] == account.address
    assert datetime.fromisoformat(body["expires_at"]) > datetime.now(UTC) + timedelta(hours=23)
    async with e.session.post(e.url + "/api/v1/uploads", headers={
            **TUS, "Upload-Length": "3", **bearer(body["token"])}) as r:
        assert r.status == 201
        video_id = r.headers["Location"].rsplit("/", 1)[1]
    video = await e.app[stores.CATALOG].get(video_id)
    assert video is not None and video.owner == account.address
    # The replayed message finds its nonce used.
    status, body = await _verify(e, message, personal_sign(account, message))
    assert status == 401 and "nonce" in body["detail"]


async def test_bad_sign_ins_are_refused_with_a_reason(edge) -> None:  # noqa: F811
    e = await edge(auth_required=True, auth={"chain_ids": [1, 10]})
    account, other = new_account(), new_account()
    host = _host(e)
    cases = {
        "domain": siwe_message(account.address, await _nonce(e), domain="evil.example"),
        "chain": siwe_message(account.address, await _nonce(e), domain=host, chain_id=5),
        "expired": siwe_message(account.address, await _nonce(e), domain=host,
                                issued_at=datetime.now(UTC) - timedelta(minutes=2),
                                expires_in=timedelta(minutes=1)),
        "future": siwe_message(account.address, await _nonce(e), domain=host,
                               issued_at=datetime.now(UTC) + timedelta(hours=1)),
        "nonce": siwe_message(account.address, "NeverIssued123", domain=host),
    }
    for why, message in cases.items():
        status, body = await _verify(e, message, personal_sign(account, message))
        assert status == 401, (why, body)
        assert body["error"] == "sign-in failed"
    # Signed by another wallet: the forged claim to be `account`.
    message = siwe_message(account.address, await _nonce(e), domain=host)
    status, body = await _verify(e, message, personal_sign(other, message))
    assert status == 401 and "signature" in body["detail"]
    status, body = await _verify(e, message, "0x1234")
    assert status == 401
    # The nonce of a refused attempt is still usable by its rightful signer.
    status, body = await _verify(e, message, personal_sign(account, message))
    assert status == 200
    # Malformed input is a 400.
    status, body = await _verify(e, "hello", "0x00")
    assert status == 400 and body["error"] == "bad request"
    async with e.session.post(e.url + "/api/v1/auth/verify", data=b"{not json") as r:
        assert r.status == 400
    # Chain 10 is accepted by this config.
    message = siwe_message(account.address, await _nonce(e), domain=host, chain_id=10)
    assert (await _verify(e, message, personal_sign(account, message)))[0] == 200


async def test_configured_domain_wins_over_the_host(edge) -> None:  # noqa: F811
    e = await edge(auth_required=True, auth={"domain": "videos.example"})
    account = new_account()
    message = siwe_message(account.address, await _nonce(e), domain=_host(e))
    assert (await _verify(e, message, personal_sign(account, message)))[0] == 401
    message = siwe_message(account.address, await _nonce(e), domain="videos.example")
    assert (await _verify(e, message, personal_sign(account, message)))[0] == 200


async def test_forged_and_expired_tokens_are_401(edge, tmp_path) -> None:  # noqa: F811
    e = await edge(auth_required=True)
    token = await sign_in(e, new_account())
    assert await _create_upload(e, bearer(token)) == 201
    body, mac = token.split(".")
    forged = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + mac
    expired = e.app[stores.SIGNER].sign(Claims(kind="session", sub="0x" + "1" * 40, exp=time.time() - 1))
    play = e.app[stores.SIGNER].sign(Claims(kind="play", vid="x", exp=time.time() + 60))
    for bad in (forged, expired, play, "garbage", ""):
        assert await _create_upload(e, {"Authorization": f"Bearer {bad}"}) == 401, bad
    assert await _create_upload(e, {"Authorization": f"Basic {token}"}) == 401
    # The signing key was created for this node, private to its user.
    secret = e.app[CONFIG].auth_secret_file
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_bytes()) >= 32
    async with e.session.get(e.url + "/health") as r:
        assert r.status == 200


async def test_writes_pass_without_a_token_when_auth_is_not_required(edge) -> None:  # noqa: F811
    e = await edge(auth_required=False)
    assert await _create_upload(e, {}) == 201
    assert await _create_upload(e, {"Authorization": "Bearer forged.token"}) == 401


def test_one_message_format_for_builder_and_parser() -> None:
    """The CLI's builder and the edge's parser share edge/access/siwe.py, and both agree with the
    reference ``siwe`` package's text."""
    from datetime import UTC, datetime, timedelta

    from streamgate.control.edge_client import siwe_text
    from streamgate.edge.access.siwe import format_message, parse_message

    account = new_account()
    issued = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    reference = siwe_message(account.address, "Nonce12345678", domain="videos.example",
                             issued_at=issued, expires_in=timedelta(minutes=5))
    assert format_message(parse_message(reference)) == reference
    built = siwe_text("videos.example", "http://videos.example/", account.address, "Nonce12345678")
    parsed = parse_message(built)
    assert (parsed.domain, parsed.nonce, parsed.statement) == ("videos.example", "Nonce12345678",
                                                               "Sign in to StreamGate.")
    assert format_message(parsed) == built


def test_an_existing_secret_file_is_only_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A fleet's secret file is the roles', in a directory the edge may not write
    (ProtectSystem=strict): loading it must not create anything beside it."""
    from streamgate.common.config import config_from_tree
    from streamgate.edge.access.tokens import load_secret

    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "auth-secret").write_text("the-fleet-secret-0123456789abcdef\n")
    before = etc.stat().st_mtime_ns, sorted(p.name for p in etc.iterdir())
    config = config_from_tree({"deployment": {"mode": "fleet"}, "storage": {"data_dir": str(tmp_path / "data")},
                               "cache": {"redis_url": "redis://127.0.0.1:1/0"},
                               "auth": {"secret_file": str(etc / "auth-secret")}})
    assert load_secret(config) == b"the-fleet-secret-0123456789abcdef"
    assert (etc.stat().st_mtime_ns, sorted(p.name for p in etc.iterdir())) == before
