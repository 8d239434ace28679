"""API answers never carry server paths; Upload-Metadata text with control characters is refused (issue 14)."""

from __future__ import annotations

import base64
import time

import pytest
from intake_support import TUS, edge  # noqa: F401

from streamgate.common.protocol import JobFailed
from streamgate.edge import stores
from streamgate.edge.catalog import Video
from streamgate.edge.errors import HTTPError
from streamgate.edge.intake.progress import ProgressApplier

VIDEO = "e" * 32
FARM_REASON = ("decode failed: [Errno 1094995529] Invalid data found when processing input: "
               f"'/srv/streamgate/data/sources/{VIDEO}/source.bin' (tried file:///tmp/x/y.mp4)")


async def test_farm_reasons_reach_the_api_without_server_paths(edge) -> None:  # noqa: F811
    e = await edge()
    catalog = e.app[stores.CATALOG]
    await catalog.create(Video(id=VIDEO, created_at=time.time(), status="transcoding"))
    await ProgressApplier(catalog).apply(JobFailed(job_id=VIDEO, attempt=1, reason=FARM_REASON, final=True))
    stored = await catalog.get(VIDEO)
    assert stored is not None and stored.status == "failed"
    async with e.session.get(f"{e.url}/api/v1/videos/{VIDEO}") as r:
        error = (await r.json())["error"]
    for text in (stored.error, error):
        assert "/srv" not in text and "/sources/" not in text and "/tmp" not in text, text
        assert "Invalid data found" in text and "source.bin" in text  # the reason stays useful


def test_error_details_drop_paths_but_keep_api_routes() -> None:
    detail = HTTPError(503, "farm unavailable", "no broker at ipc:///var/lib/sg/data/run/broker.sock "
                       "or /var/lib/sg/data/run/broker.sock; see POST /api/v1/auth/verify").response()
    text = detail.text or ""
    assert "/var/lib" not in text and "broker.sock" in text
    assert "/api/v1/auth/verify" in text


def _meta(**fields: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in fields.items())


@pytest.mark.parametrize(("key", "value"), [
    ("filename", "clip\x00.mp4"), ("filename", "clip\n.mp4"), ("title", "a\x1b[31mred"), ("title", "tab\there\x7f"),
])
async def test_control_characters_in_filename_and_title_are_400(edge, key: str, value: str) -> None:  # noqa: F811
    e = await edge()
    fields = {"filename": "clip.mp4", "title": "ok", key: value}
    async with e.session.post(e.url + "/api/v1/uploads", headers={
            **TUS, "Upload-Length": "3", "Upload-Metadata": _meta(**fields)}) as r:
        body = await r.json()
        assert r.status == 400, body
        assert key in body["detail"]
    assert (await e.app[stores.CATALOG].page(limit=10, offset=0, owner=None, public_only=False))[1] == 0


async def test_plain_unicode_titles_still_pass(edge) -> None:  # noqa: F811
    e = await edge()
    async with e.session.post(e.url + "/api/v1/uploads", headers={
            **TUS, "Upload-Length": "3", "Upload-Metadata": _meta(filename="été.mp4", title="Ünïcode — ok 🎬")}) as r:
        assert r.status == 201, await r.text()


async def test_readiness_details_carry_no_server_paths(edge) -> None:  # noqa: F811
    e = await edge()  # no broker runs: its (advisory) check fails, and says so
    async with e.session.get(e.url + "/api/v1/health") as r:
        text = await r.text()
    assert r.status == 200 and (await r.json())["warnings"] == ["broker"], text
    assert str(e.app[stores.CONFIG].storage.root) not in text and "ipc://" not in text, text
