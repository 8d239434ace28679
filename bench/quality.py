"""Benchmark: quality at equal cost (issue 18, goal 3): the farm's ladder against the ffmpeg CLI's.

    .venv/bin/python bench/quality.py [--renditions 1080,720,480] [--preset veryfast] [--quick]

The source is bench/transcode.py's standard clip (30 s 1080p30, made once under bench/.cache);
``--quick`` makes a 2 s 640x360 one and a 360,240 ladder instead. It is transcoded twice at the
same settings: by `streamgate transcode` (the farm pipeline) and by the reference ffmpeg command
line of bench/transcode.py (single decode, split graph, the same x264 preset, CRF, VBV caps and
GOP). For every rung, each output is measured against the source scaled to the rung's size
(bicubic, the same for both) with ffmpeg's psnr and ssim filters, and its video bitrate taken
from its segments' bytes over the clip's duration.

Verdict per rung: PSNR within 0.1 dB and SSIM within 0.002 of ffmpeg's (the farm no worse by
more than that), bitrate within 3% of ffmpeg's.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import transcode as ref  # noqa: E402
from report import load_line, ratio_line  # noqa: E402

PSNR_DB, SSIM_ABS, BITRATE_REL = 0.1, 0.002, 0.03


def quick_source(folder: Path) -> tuple[Path, int, int, int, float]:
    from streamgate.common.synth import make_video

    path = folder / "quick-360p30-2s.mp4"
    make_video(path, seconds=2.0, width=640, height=360, fps=30, preset="veryfast")
    return path, 640, 360, 30, 2.0


def plan(width: int, height: int, fps: int, renditions: list[int], preset: str, segment: float | None):  # type: ignore[no-untyped-def]
    from streamgate.common.config import TranscoderConfig
    from streamgate.farm.pipeline.ladder import plan_ladder
    from streamgate.farm.pipeline.transcode import TranscodeSettings

    extra = {"segment_duration": segment} if segment else {}
    settings = TranscodeSettings.from_config(TranscoderConfig(), ladder=renditions, preset=preset, **extra)
    rungs = plan_ladder(width, height, fps, settings.ladder, peak_bitrate_1080p=settings.peak_bitrate_1080p,
                        bufsize_factor=settings.bufsize_factor)
    return settings, rungs


def joined(playlist: Path, out: Path) -> tuple[Path, int]:
    """The rendition as one fMP4 file (its EXT-X-MAP and segments, in order) and its segment bytes."""
    text = playlist.read_text()
    init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', text)
    segments = [line for line in text.splitlines() if line and not line.startswith("#")]
    media = sum((playlist.parent / s).stat().st_size for s in segments)
    with open(out, "wb") as sink:
        for name in ([init.group(1)] if init else []) + segments:
            sink.write((playlist.parent / name).read_bytes())
    return out, media


def metrics(distorted: Path, source: Path, width: int, height: int) -> tuple[float, float]:
    graph = (f"[1:v]scale={width}:{height}:flags=bicubic,split[r1][r2];[0:v]split[d1][d2];"
             "[d1][r1]psnr;[d2][r2]ssim")
    run = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-i", str(distorted), "-i", str(source),
                          "-lavfi", graph, "-f", "null", "-"], capture_output=True, text=True, check=True)
    psnr = re.search(r"PSNR .*average:([\d.]+|inf)", run.stderr)
    ssim = re.search(r"SSIM .*All:([\d.]+)", run.stderr)
    if not psnr or not ssim:
        raise RuntimeError(f"no psnr/ssim in ffmpeg's output: {run.stderr[-1500:]}")
    return float(psnr.group(1)), float(ssim.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--renditions", default="1080,720,480")
    parser.add_argument("--preset", default="veryfast")
    parser.add_argument("--quick", action="store_true", help="smoke run: a 2 s 640x360 clip, a 360,240 ladder")
    args = parser.parse_args(argv)
    if shutil.which("ffmpeg") is None:
        print("ffmpeg is not installed", file=sys.stderr)
        return 2
    print(load_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="sg-bench-quality-") as tmp:
        work = Path(tmp)
        if args.quick:
            source, width, height, fps, seconds = quick_source(work)
            renditions, segment = [360, 240], 1.0
        else:
            source, width, height, fps, seconds = ref.standard_source(), ref.WIDTH, ref.HEIGHT, ref.FPS, ref.SECONDS
            renditions, segment = [int(h) for h in args.renditions.split(",")], None
        ref.FPS = fps  # the reference command's GOP follows the source's rate
        settings, rungs = plan(width, height, fps, renditions, args.preset, segment)
        ours, theirs = work / "streamgate", work / "ffmpeg"
        for folder in [theirs / f"v{i}" for i in range(len(rungs) + 1)]:
            folder.mkdir(parents=True)
        for name, commands in (("streamgate transcode", ref.streamgate_cmd(source, ours, settings, rungs)),
                               ("ffmpeg single decode", ref.ffmpeg_single(source, theirs, settings, rungs))):
            run = ref.measure(commands, work)
            print(f"{name:22s} wall {run.wall:6.2f} s cpu {run.cpu:6.2f} s {'ok' if run.ok else run.detail} | "
                  f"{load_line()}", flush=True)
            if not run.ok:
                return 1
        rows = []
        for i, rung in enumerate(rungs):
            row = {"rung": rung.name, "size": f"{rung.width}x{rung.height}"}
            for who, playlist in (("sg", ours / rung.name / "index.m3u8"), ("ff", theirs / f"v{i}" / "index.m3u8")):
                path, media = joined(playlist, work / f"{who}-{rung.name}.mp4")
                row[f"{who}_psnr"], row[f"{who}_ssim"] = metrics(path, source, rung.width, rung.height)
                row[f"{who}_kbps"] = media * 8 / seconds / 1000
            rows.append(row)
    print()
    print(f"source {width}x{height}@{fps} {seconds:g} s; preset {args.preset}, CRF {settings.crf}, "
          f"{settings.segment_duration:g} s segments; PSNR/SSIM against the source scaled to the rung (bicubic)")
    print("| rung | size | PSNR streamgate | PSNR ffmpeg | Δ dB | SSIM streamgate | SSIM ffmpeg | Δ | "
          "kbit/s streamgate | kbit/s ffmpeg | bitrate ratio | verdict |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    all_met = True
    for r in rows:
        d_psnr, d_ssim = r["sg_psnr"] - r["ff_psnr"], r["sg_ssim"] - r["ff_ssim"]
        rate = r["sg_kbps"] / r["ff_kbps"]
        met = d_psnr >= -PSNR_DB and d_ssim >= -SSIM_ABS and abs(rate - 1) <= BITRATE_REL
        all_met &= met
        print(f"| {r['rung']} | {r['size']} | {r['sg_psnr']:.2f} | {r['ff_psnr']:.2f} | {d_psnr:+.2f} | "
              f"{r['sg_ssim']:.4f} | {r['ff_ssim']:.4f} | {d_ssim:+.4f} | {r['sg_kbps']:.0f} | {r['ff_kbps']:.0f} | "
              f"{rate:.3f} | {'met' if met else 'NOT met'} |")
    print()
    for r in rows:
        rate = r["sg_kbps"] / r["ff_kbps"]
        print(ratio_line(f"{r['rung']} bitrate streamgate / ffmpeg", rate, f"within {BITRATE_REL:.0%} of 1.00x",
                         abs(rate - 1) <= BITRATE_REL))
    print(f"verdict: quality at equal cost {'met' if all_met else 'NOT met'} on every rung "
          f"(PSNR within {PSNR_DB} dB, SSIM within {SSIM_ABS}, bitrate within {BITRATE_REL:.0%})")
    print(load_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
