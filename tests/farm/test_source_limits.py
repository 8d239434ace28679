"""Bounded cost per upload and no half videos called ready (issue 14): sources above the
configured size or length are refused by the probe before frames are allocated; a source that
decodes to much less than it declares, or is one still image, fails with a reason."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import pytest
from media_files import write_flat

from streamgate.common.synth import make_video
from streamgate.farm.pipeline.errors import BadInputError
from streamgate.farm.pipeline.probe import probe
from streamgate.farm.pipeline.transcode import TranscodeSettings, transcode

SMALL = TranscodeSettings(ladder=[240], segment_duration=1.0, preset="ultrafast")


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_flat(tmp_path_factory.mktemp("huge") / "huge.mp4", 8000, 8000)


def test_a_source_above_the_pixel_limit_is_refused_by_the_probe(huge: Path, tmp_path: Path) -> None:
    assert huge.stat().st_size < 400_000
    with pytest.raises(BadInputError) as failure:
        probe(huge, max_pixels=4096 * 2304)
    assert "8000x8000" in failure.value.reason and "pixel" in failure.value.reason
    started = time.monotonic()
    with pytest.raises(BadInputError) as failure:
        transcode(huge, tmp_path / "out", SMALL)  # the default limit (4096x2304) applies
    assert "8000x8000" in failure.value.reason
    assert time.monotonic() - started < 10
    assert not (tmp_path / "out").exists()  # refused before anything was planned or written


def test_refusing_a_huge_source_stays_small_in_memory(huge: Path, tmp_path: Path) -> None:
    # In a fresh process (this one's peak is the test run's): the refusal costs one decoded
    # picture at most, not a ring and a ladder of encoders at 8000x8000 (2.4 GiB before).
    code = (
        "import re\n"
        "from streamgate.farm.pipeline.transcode import TranscodeSettings, transcode\n"
        "from streamgate.farm.pipeline.errors import BadInputError\n"
        "try:\n"
        f"    transcode({str(huge)!r}, {str(tmp_path / 'out')!r}, TranscodeSettings(ladder=[240]))\n"
        "except BadInputError as exc:\n"
        "    print(exc.reason)\n"
        # VmHWM, not ru_maxrss: the latter starts at the forking parent's size (fork(2)).
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    reason, peak_kib = out.stdout.strip().splitlines()
    assert "8000x8000" in reason
    assert int(peak_kib) < 400 * 1024, f"peak RSS {int(peak_kib) // 1024} MiB"


def test_a_source_longer_than_the_limit_is_refused(video_factory: Callable[..., Path], tmp_path: Path) -> None:
    source = video_factory("three.mp4", seconds=3.0, width=160, height=120, fps=10, audio=False)
    with pytest.raises(BadInputError) as failure:
        transcode(source, tmp_path / "out", TranscodeSettings(ladder=[120], segment_duration=1.0,
                                                              max_source_duration=2.0))
    assert "longer than" in failure.value.reason and "3" in failure.value.reason


def test_truncated_faststart_mp4_is_not_a_short_video(tmp_path: Path) -> None:
    whole = make_video(tmp_path / "six.mov", seconds=6.0, width=160, height=120, fps=15, audio=False)
    faststart = tmp_path / "six.mp4"
    # Index first (moov before mdat), as phones and web encoders write it: a cut keeps the index.
    with av.open(str(whole)) as src, av.open(str(faststart), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    data = faststart.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) * 2 // 5])
    assert probe(truncated).duration_s > 5.5  # it still declares its whole length
    with pytest.raises(BadInputError) as failure:
        transcode(truncated, tmp_path / "out", SMALL)
    assert "declares" in failure.value.reason and "truncated" in failure.value.reason


def test_a_still_image_renamed_mp4_is_not_a_video(tmp_path: Path) -> None:
    jpeg = write_flat(tmp_path / "photo.jpg", 320, 240, codec="mjpeg", pix_fmt="yuvj420p")
    renamed = tmp_path / "photo.mp4"
    jpeg.rename(renamed)
    with pytest.raises(BadInputError) as failure:
        transcode(renamed, tmp_path / "out", SMALL)
    assert "still image" in failure.value.reason
