"""End to end on ``streamgate run``: ``streamgate upload`` signs in with a fresh wallet key,
uploads over tus, follows the transcode to ready; ``videos`` lists, ``sign-url`` signs."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

from conftest import streamgate_env


def _cli(platform, *argv: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "streamgate", *argv, "--server", platform.url],
                          env=streamgate_env(platform.data_dir, 1), capture_output=True, text=True,
                          timeout=timeout, cwd=platform.data_dir.parent)


def test_upload_signs_in_transcodes_and_prints_urls(run_platform, small_video: Path, tmp_path: Path) -> None:
    platform = run_platform(AUTH_REQUIRED="true")
    wallet = tmp_path / "home" / "wallet.key"
    done = _cli(platform, "upload", str(small_video), "--title", "Small", "--private", "--priority", "5",
                "--wallet-key", str(wallet))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(wallet.stat().st_mode) == 0o600  # created on first use, private
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines())
    video_id, hls, dash = lines["id"].strip(), lines["HLS"].strip(), lines["DASH"].strip()
    assert "/s/" in hls and hls.endswith(f"/videos/{video_id}/master.m3u8")  # private: a signed URL
    with urllib.request.urlopen(hls, timeout=10) as r:
        assert r.status == 200 and r.read().startswith(b"#EXTM3U")
    with urllib.request.urlopen(dash, timeout=10) as r:
        assert r.status == 200 and b"<MPD" in r.read()
    # The plain URL of a private video needs the owner.
    try:
        urllib.request.urlopen(f"{platform.url}/videos/{video_id}/master.m3u8", timeout=10)
        raise AssertionError("a private video played without credentials")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    listed = _cli(platform, "videos", "--mine", "--json", "--wallet-key", str(wallet))
    assert listed.returncode == 0, listed.stderr
    video = json.loads(listed.stdout)["videos"][0]
    assert video["id"] == video_id and video["status"] == "ready" and video["priority"] == 5
    assert video["renditions"] and video["duration"] > 1.5
    signed = _cli(platform, "sign-url", video_id, "--ttl", "60", "--wallet-key", str(wallet))
    assert signed.returncode == 0 and "/s/" in signed.stdout
    # Another wallet may not sign for it.
    other = _cli(platform, "sign-url", video_id, "--wallet-key", str(tmp_path / "other.key"))
    assert other.returncode == 1 and "403" in other.stderr
