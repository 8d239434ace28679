"""``streamgate upload --parallel N`` (tus concatenation, issue 17): N partial uploads at once, then
the final one; byte-identical on both backends, and end to end through a transcode."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import streamgate_env
from intake_support import edge  # noqa: F401  (fixture)
from storage_support import SeaweedFS

from streamgate.common.config import config_from_tree
from streamgate.edge import stores
from streamgate.edge.objects import OBJECT_STORE

MiB = 2**20


@pytest.fixture(scope="module")
def file_64m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("parallel") / "movie.mp4"
    with open(path, "wb") as out:
        for i in range(64):
            out.write(hashlib.shake_256(b"cli" + i.to_bytes(4, "big")).digest(MiB))
        out.write(b"odd tail")  # not a multiple of the part count
    return path


@pytest.mark.parametrize("backend", ["disk", "s3"])
async def test_upload_parallel_4_lands_byte_identical(edge, tmp_path: Path, file_64m: Path,  # noqa: F811
                                                      backend: str, request: pytest.FixtureRequest) -> None:
    tree: dict = {"storage": {"data_dir": str(tmp_path / "data")}, "auth": {"required": False},
                  "uploads": {"resubmit_interval": "1h", "sweep_interval": "1h"}}
    if backend == "s3":
        server: SeaweedFS = request.getfixturevalue("seaweedfs")
        tree["storage"].update(server.storage_tree(f"t-{uuid.uuid4().hex[:12]}", part_size="5MiB"))
        tree["cache"] = {"redis_url": request.getfixturevalue("redis_url")}
    e = await edge(config_from_tree(tree))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamgate", "upload", str(file_64m), "--parallel", "4", "--no-wait",
        "--server", e.url, "--wallet-key", str(tmp_path / "wallet.key"),
        env=streamgate_env(tmp_path / "cli", 1), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=100)
    assert proc.returncode == 0, err.decode()
    assert "4 parts" in err.decode()  # the one bar over the parts
    video_id = out.decode().split()[-1]
    expected = hashlib.sha256(await asyncio.to_thread(file_64m.read_bytes)).hexdigest()
    video = await e.app[stores.CATALOG].get(video_id)
    assert video is not None and video.status == "queued" and video.sha256 == expected
    assert video.size == 64 * MiB + len(b"odd tail") and video.filename == "movie.mp4"
    upload = await e.app[stores.UPLOAD_STORE].get(video_id)
    assert upload is not None and len(upload.concat) == 4
    if backend == "s3":
        # Server-side copies, one part per partial: the partials' bytes never came back.
        assert [p.size for p in upload.parts] == [
            (i + 1) * video.size // 4 - i * video.size // 4 for i in range(4)]
        digest = hashlib.sha256()
        async with await e.app[OBJECT_STORE].open_read(video.source, chunk_size=MiB) as stream:
            async for chunk in stream:
                digest.update(chunk)
        assert digest.hexdigest() == expected
    else:
        assert hashlib.sha256(await asyncio.to_thread(Path(video.source).read_bytes)).hexdigest() == expected
    # Only the final upload is a video.
    assert await e.app[stores.CATALOG].with_status("queued") == [video_id]
    assert await e.app[stores.CATALOG].with_status("uploading") == []


def test_upload_parallel_signs_in_and_transcodes(run_platform, small_video: Path, tmp_path: Path) -> None:
    platform = run_platform(AUTH_REQUIRED="true")
    done = subprocess.run(
        [sys.executable, "-m", "streamgate", "upload", str(small_video), "--parallel", "4", "--title", "Four",
         "--server", platform.url, "--wallet-key", str(tmp_path / "wallet.key")],
        env=streamgate_env(platform.data_dir, 1), capture_output=True, text=True, timeout=100,
        cwd=platform.data_dir.parent)
    assert done.returncode == 0, done.stderr
    assert "signed in as" in done.stderr
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines())
    assert lines["HLS"].strip().endswith(f"/videos/{lines['id'].strip()}/master.m3u8")
