"""The web UI in a real browser: Playwright (tests/web/e2e.mjs) drives Debian's Chromium against a
running ``streamgate run``; this side holds the wallet key and signs for the page."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("e2e.mjs")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and NODE and (REPO / "node_modules" / "playwright-core").is_dir()),
    reason="needs chromium, node and node_modules (make test installs them)")


def drive(url: str, clip: Path, artifacts: Path, account: Any, log: list[str]) -> dict[str, Any]:
    env = dict(os.environ, BASE_URL=url, CHROMIUM=str(CHROMIUM), CLIP=str(clip),
               ARTIFACTS=str(artifacts), ADDRESS=account.address)
    result: dict[str, Any] | None = None
    with subprocess.Popen([str(NODE), str(SCRIPT)], cwd=REPO, env=env, text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            for line in proc.stdout:
                kind, _, payload = line.rstrip("\n").partition(" ")
                if kind == "SIGN":
                    request = json.loads(payload)
                    # personal_sign's (message, address): sign only for our own address.
                    assert request["address"].lower() == account.address.lower()
                    signed = account.sign_message(encode_defunct(hexstr=request["message"]))
                    proc.stdin.write(json.dumps("0x" + bytes(signed.signature).hex()) + "\n")
                    proc.stdin.flush()
                elif kind == "RESULT":
                    result = json.loads(payload)
                else:
                    log.append(line.rstrip("\n"))
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert result is not None, "\n".join(log[-40:])
    return result


@pytest.mark.timeout(400)
def test_sign_in_upload_resume_play_and_dashboard(run_platform: Any, video_factory: Any) -> None:
    clip = video_factory("web.mp4", seconds=3.0, width=640, height=360)
    platform = run_platform(AUTH_REQUIRED="true", STREAMGATE__TRANSCODER__LADDER="[360, 240]",
                            STREAMGATE__TRANSCODER__SEGMENT_DURATION="1s")
    # Kept after the test (and printed) so the screenshots can be looked at.
    artifacts = Path(tempfile.mkdtemp(prefix="streamgate-web-artifacts-"))
    print(f"web UI screenshots: {artifacts}", file=sys.stderr)
    account = Account.create()
    log: list[str] = []
    result = drive(platform.url, clip, artifacts, account, log)
    assert not result.get("error"), result["error"] + "\n" + "\n".join(log[-40:])
    steps = {s["name"]: s for s in result["steps"]}

    assert "No Ethereum wallet" in steps["no wallet message"]["text"]
    assert steps["signed in"]["address"] == account.address

    reload = steps["reloaded mid-upload"]
    assert 0 < reload["offsetAtReload"] < reload["lengthAtReload"] == clip.stat().st_size
    assert "Interrupted upload" in reload["interruptedText"]
    ready = steps["upload ready"]
    assert ready["resumedUrl"] == reload["firstUrl"], "the reload started a new upload instead of resuming"
    assert ready["mineTotal"] == 1
    assert steps["library"]["badge"] == "Private"

    played = steps["played"]
    assert played["engine"] == "hls"
    assert sorted(played["levels"]) == ["240p", "360p"]
    assert played["mutedAfterM"] is False  # muted by the test, "m" toggles it back
    assert played["played"]["height"] == 240  # the quality menu's choice, not the ABR's
    assert played["played"]["currentTime"] >= 2.5  # to the end of the 3 s clip
    assert played["played"]["signed"], "a private video's share link carries its signed token"

    dashboard = steps["dashboard"]
    assert dashboard["live"] == "live"  # server-sent events, not polling
    assert "Workers active" in dashboard["tiles"]
    assert dashboard["fleet"]
    assert not result["pageErrors"], result["pageErrors"]
    shots = [Path(p) for p in result["screenshots"]]
    assert len(shots) == 14 and all(p.stat().st_size > 10_000 for p in shots)
