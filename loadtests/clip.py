"""The clip the uploaders send, made where the load runs: a machine with locust and nothing of StreamGate.

With ffmpeg on PATH it encodes one second of test pattern and tone (H.264 + AAC in MP4, what an
uploader would send); without it, StreamGate's own generator when that happens to be installed;
else the load test says to set LOADTEST_UPLOAD_FILE. No media file is kept in the repository.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


def ffmpeg_clip(out: Path, seconds: float = 1.0, width: int = 320, height: int = 240) -> Path:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise FileNotFoundError("ffmpeg")
    subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=30",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
                    "-t", f"{seconds:g}", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-b:a", "64k", "-shortest", "-movflags", "+faststart", str(out)],
                   check=True, capture_output=True, timeout=120)
    return out


def make_clip(seconds: float = 1.0, width: int = 320, height: int = 240) -> bytes:
    """The bytes of a small playable clip; RuntimeError naming the ways out when none can be made."""
    with tempfile.TemporaryDirectory(prefix="sg-load-") as scratch:
        out = Path(scratch) / "upload.mp4"
        try:
            return ffmpeg_clip(out, seconds, width, height).read_bytes()
        except FileNotFoundError:
            pass
        try:
            from streamgate.common.synth import make_video
        except ImportError:
            raise RuntimeError("the uploaders need a clip: install ffmpeg or set LOADTEST_UPLOAD_FILE") from None
        return make_video(out, seconds=seconds, width=width, height=height).read_bytes()
