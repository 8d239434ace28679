"""tus-js-client (npm, run by node) and tuspy against real edges, both storage backends (issue 17):
``parallelUploads`` (concatenation) and ``uploadLengthDeferred`` (creation-defer-length) land a
64 MiB file byte-identical; tuspy in 256 KiB chunks never sees a 429 on the default rate limits."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from intake_support import edge, make_config  # noqa: F401  (fixture)
from storage_support import SeaweedFS

from streamgate.common.config import config_from_tree
from streamgate.edge import stores
from streamgate.edge.keys import CONFIG
from streamgate.edge.objects import OBJECT_STORE

MiB = 2**20
REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("tus_js.mjs")
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(
    not (NODE and (REPO / "node_modules" / "tus-js-client").is_dir()),
    reason="needs node and node_modules (make test installs them)")


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tusjs") / "big.bin"
    with open(path, "wb") as out:
        for i in range(64):
            out.write(hashlib.shake_256(i.to_bytes(4, "big")).digest(MiB))
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def _config(tmp_path: Path, backend: str, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Default rate limits on, as shipped: an honest client must never see a 429."""
    tree: dict = {"storage": {"data_dir": str(tmp_path / "data")}, "auth": {"required": False},
                  "uploads": {"resubmit_interval": "1h", "sweep_interval": "1h"}}
    if backend == "s3":
        server: SeaweedFS = request.getfixturevalue("seaweedfs")
        prefix = f"t-{uuid.uuid4().hex[:12]}"
        tree["storage"].update(server.storage_tree(prefix, part_size="5MiB"))
        tree["cache"] = {"redis_url": request.getfixturevalue("redis_url")}
    return config_from_tree(tree)


async def _arrived(e, video_id: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    """The source the video points at has the sent bytes; the partials became no video."""
    video = await e.app[stores.CATALOG].get(video_id)
    assert video is not None and video.status == "queued", video
    assert video.sha256 == expected
    if video.source.startswith("sources/"):  # s3: read the object back
        store = e.app[OBJECT_STORE]
        digest = hashlib.sha256()
        async with await store.open_read(video.source, chunk_size=MiB) as stream:
            async for chunk in stream:
                digest.update(chunk)
        assert digest.hexdigest() == expected
    else:
        assert await asyncio.to_thread(_sha256, Path(video.source)) == expected
    assert await e.app[stores.CATALOG].with_status("uploading") == []


async def _node(*args: str) -> dict:
    proc = await asyncio.create_subprocess_exec(
        NODE or "node", str(SCRIPT), *args, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=100)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


@needs_node
@pytest.mark.parametrize("backend", ["disk", "s3"])
@pytest.mark.parametrize("mode", ["parallel", "deferred"])
async def test_tus_js_client_lands_64_mib_byte_identical(edge, tmp_path: Path, big_file: Path,  # noqa: F811
                                                         backend: str, mode: str,
                                                         request: pytest.FixtureRequest) -> None:
    e = await edge(_config(tmp_path, backend, request))
    result = await _node(e.url + "/api/v1/uploads", str(big_file), mode, "4")
    assert result["offset"] == 64 * MiB
    video_id = result["url"].rstrip("/").rsplit("/", 1)[1]
    await _arrived(e, video_id, await asyncio.to_thread(_sha256, big_file))
    upload = await e.app[stores.UPLOAD_STORE].get(video_id)
    assert upload is not None and upload.done
    assert len(upload.concat) == (4 if mode == "parallel" else 0)
    for partial in upload.concat:  # joined, then removed
        assert await e.app[stores.UPLOAD_STORE].is_gone(partial)


def _tuspy(base: str, path: Path, chunk_size: int) -> str:
    from tusclient import client

    with open(path, "rb") as stream:
        uploader = client.TusClient(base + "/api/v1/uploads").uploader(
            file_stream=stream, chunk_size=chunk_size, metadata={"filename": path.name}, retries=0)
        uploader.upload()
        return str(uploader.url)


async def test_tuspy_in_256_kib_chunks_never_sees_a_429(edge, tmp_path: Path, big_file: Path,  # noqa: F811
                                                        request: pytest.FixtureRequest) -> None:
    e = await edge(_config(tmp_path, "disk", request))
    assert e.app[CONFIG].edge.rate_limit.enabled
    # 256 PATCHes in a few seconds: far over upload_per_second (20/s, burst 50) if PATCHes counted.
    url = await asyncio.to_thread(_tuspy, e.url, big_file, 256 * 1024)
    await _arrived(e, url.rsplit("/", 1)[1], await asyncio.to_thread(_sha256, big_file))


@pytest.mark.parametrize("with_redis", [False, True])
async def test_the_byte_cap_answers_429_with_retry_after_and_keeps_what_arrived(
        edge, tmp_path: Path, with_redis: bool, request: pytest.FixtureRequest) -> None:  # noqa: F811
    redis_url = request.getfixturevalue("redis_url") if with_redis else ""
    e = await edge(make_config(tmp_path / "data", redis_url=redis_url,
                               rate_limit={"upload_bytes_per_second": "1MiB"}))

    async with e.session.post(e.url + "/api/v1/uploads", headers={"Tus-Resumable": "1.0.0",
                                                                  "Upload-Length": str(8 * MiB)}) as r:
        url = r.headers["Location"]
    body = b"z" * (8 * MiB)
    async with e.session.patch(url, data=io.BytesIO(body), headers={
            "Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": "0"}) as r:
        await r.read()
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
        kept = int(r.headers["Upload-Offset"])
    assert 0 < kept < 8 * MiB  # one second's worth went in, the rest waits
    async with e.session.head(url, headers={"Tus-Resumable": "1.0.0"}) as r:
        assert int(r.headers["Upload-Offset"]) == kept
