"""The SIWE domain and the URLs the edge builds come from config, never the request's Host (issue 14)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, streamgate_env
from intake_support import TUS, bearer, edge, make_config, new_account, personal_sign, sign_in, siwe_message  # noqa: F401

from streamgate.common.config import ConfigError


async def _nonce(e) -> str:  # type: ignore[no-untyped-def]
    async with e.session.get(e.url + "/api/v1/auth/nonce") as r:
        return (await r.json())["nonce"]


async def _upload(e, headers: dict[str, str]) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    async with e.session.post(e.url + "/api/v1/uploads",
                              headers={**TUS, "Upload-Length": "3", **headers}) as r:
        return r.status, r.headers.get("Location", "")


async def test_a_sign_in_phished_for_another_host_is_refused_and_deletes_nothing(edge) -> None:  # noqa: F811
    e = await edge(auth_required=True)
    victim = new_account()
    status, location = await _upload(e, bearer(await sign_in(e, victim)))
    assert status == 201
    video_id = location.rsplit("/", 1)[1]
    # evil.example had the victim sign a message for evil.example, then posts it here with its Host.
    message = siwe_message(victim.address, await _nonce(e), domain="evil.example")
    async with e.session.post(e.url + "/api/v1/auth/verify", headers={"Host": "evil.example"},
                              json={"message": message, "signature": personal_sign(victim, message)}) as r:
        body = await r.json()
        assert r.status in (401, 403), body
        assert "token" not in body and "domain" in body["detail"]
    async with e.session.delete(e.url + f"/api/v1/videos/{video_id}", headers={"Host": "evil.example"}) as r:
        assert r.status == 401
    async with e.session.get(e.url + f"/api/v1/videos/{video_id}") as r:
        assert r.status == 200


async def test_the_message_uri_must_be_under_the_public_origin(edge) -> None:  # noqa: F811
    e = await edge(auth_required=True)
    account = new_account()
    domain = e.url.split("://", 1)[1]
    text = siwe_message(account.address, await _nonce(e), domain=domain)
    phished = text.replace(f"URI: http://{domain}/", "URI: https://evil.example/")
    assert phished != text
    async with e.session.post(e.url + "/api/v1/auth/verify",
                              json={"message": phished, "signature": personal_sign(account, phished)}) as r:
        body = await r.json()
        assert r.status == 401 and "URI" in body["detail"], body
    assert await sign_in(e, account)  # the same wallet with the right URI gets in


def test_required_sign_in_on_a_public_binding_needs_a_domain(tmp_path: Path) -> None:
    from streamgate.edge.app import build_app

    public = {"host": "0.0.0.0", "public_url": ""}
    with pytest.raises(ConfigError) as raised:
        build_app(make_config(tmp_path, auth_required=True, server=public))
    assert "auth.domain" in str(raised.value) and "server.public_url" in str(raised.value)
    # A newcomer's node: optional sign-in needs neither, nor does a loopback-only binding.
    build_app(make_config(tmp_path, auth_required=False, server=public))
    build_app(make_config(tmp_path, auth_required=True, server={"public_url": ""}))
    build_app(make_config(tmp_path, auth_required=True, server=public, auth={"domain": "videos.example"}))
    with pytest.raises(ConfigError, match="server.public_url"):
        build_app(make_config(tmp_path, server={"public_url": "videos.example"}))


def test_streamgate_edge_refuses_to_start_without_a_domain(tmp_path: Path) -> None:
    env = streamgate_env(tmp_path / "data", free_port(), AUTH_REQUIRED="true",
                         STREAMGATE__SERVER__PUBLIC_URL="", STREAMGATE__SERVER__HOST="0.0.0.0")
    env.pop("STREAMGATE_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "streamgate", "edge", "--workers", "1"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "auth.domain" in done.stderr and "server.public_url" in done.stderr


async def test_loopback_node_signs_in_at_its_own_port(edge, tmp_path: Path) -> None:  # noqa: F811
    e = await edge(make_config(tmp_path / "data", auth_required=True, server={"public_url": ""}))
    assert await sign_in(e, new_account())  # 127.0.0.1:<server.port>
    localhost = siwe_message(new_account().address, await _nonce(e), domain="localhost:1")
    async with e.session.post(e.url + "/api/v1/auth/verify",
                              json={"message": localhost, "signature": "0x" + "00" * 65}) as r:
        assert r.status == 401


@pytest.mark.parametrize("public_url", ["", "https://videos.example"])
async def test_built_urls_never_reflect_the_host(edge, tmp_path: Path, public_url: str) -> None:  # noqa: F811
    e = await edge(make_config(tmp_path / "data", server={"public_url": public_url}))
    evil = {"Host": "evil.example"}
    status, location = await _upload(e, {**evil, "Upload-Metadata": "visibility cHJpdmF0ZQ=="})
    assert status == 201
    assert location.startswith(f"{public_url}/api/v1/uploads/"), location
    video_id = location.rsplit("/", 1)[1]
    async with e.session.patch(e.url + f"/api/v1/uploads/{video_id}", data=b"abc", headers={
            **TUS, **evil, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}) as r:
        assert r.status == 204
    async with e.session.post(e.url + f"/api/v1/videos/{video_id}/playback-url", headers=evil) as r:
        signed = await r.json()
        assert r.status == 200, signed
    for url in (signed["hls_url"], signed["dash_url"]):
        assert url.startswith(f"{public_url}/s/") and "evil" not in url
    async with e.session.get(e.url + f"/api/v1/videos/{video_id}", headers=evil) as r:
        video = await r.json()
    assert "evil" not in repr(video)
