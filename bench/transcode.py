"""Benchmark: `streamgate transcode` against the ffmpeg command line making the same ladder.

    .venv/bin/python bench/transcode.py [--runs 3] [--renditions 1080,720,480] [--preset veryfast]

The standard source is a deterministic 30 s 1080p30 H.264 + AAC clip (common/synth.py), made once
and cached under bench/.cache. Three ways are run in turn (alternating, so drift on a shared
machine hits each alike), and the medians printed:

- streamgate: decode once, shared-memory ring, one encoder process per rung (the farm pipeline);
- ffmpeg single decode: one ffmpeg, a split filter graph, libx264 per rung, fMP4 HLS;
- naive: one ffmpeg per rung, all at once, each decoding the source.

Every way uses the same x264 preset, CRF, VBV caps, GOP (one segment, no scene-cut keyframes,
keyframes forced at segment boundaries) and AAC bitrate. Reported: wall seconds, CPU seconds
(user + system of the whole process tree, from wait4), frames per second of wall time, and peak
memory (the largest sum of PSS over the process tree, sampled every 100 ms).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
SECONDS, WIDTH, HEIGHT, FPS = 30, 1920, 1080, 30


def standard_source() -> Path:
    """The 30 s 1080p30 H.264 (High, veryfast, B-frames) + AAC source, made once."""
    from streamgate.common.synth import make_video

    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n")  # generated media never lands in git
    path = CACHE / f"source-{HEIGHT}p{FPS}-{SECONDS}s.mp4"
    if not path.exists():
        print(f"making the standard source {path} (once) ...", flush=True)
        tmp = path.with_name(".source.tmp.mp4")
        make_video(tmp, seconds=SECONDS, width=WIDTH, height=HEIGHT, fps=FPS, preset="veryfast")
        os.replace(tmp, path)
    return path


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class Run:
    def __init__(self, wall: float, cpu: float, peak_mib: float, ok: bool, detail: str = "") -> None:
        self.wall, self.cpu, self.peak_mib, self.ok, self.detail = wall, cpu, peak_mib, ok, detail


def measure(commands: list[list[str]], cwd: Path) -> Run:
    """Run ``commands`` concurrently; wall until the last ends, CPU and peak PSS of their trees."""
    started = time.monotonic()
    procs = [subprocess.Popen(c, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            total = sum(_pss_kib(pid) for p in procs for pid in _tree(p.pid))
            peak = max(peak, total)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu, ok, detail = 0.0, True, ""
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
        if proc.returncode != 0:
            ok = False
            detail = (proc.stderr.read().decode(errors="replace") if proc.stderr else "")[-500:]
        if proc.stderr:
            proc.stderr.close()
    wall = time.monotonic() - started
    done.set()
    sampler.join()
    return Run(wall, cpu, peak / 1024, ok, detail)


def ladder_plan(renditions: list[int], preset: str):  # type: ignore[no-untyped-def]
    from streamgate.common.config import TranscoderConfig
    from streamgate.farm.pipeline.ladder import plan_ladder
    from streamgate.farm.pipeline.transcode import TranscodeSettings

    settings = TranscodeSettings.from_config(TranscoderConfig(), ladder=renditions, preset=preset)
    rungs = plan_ladder(WIDTH, HEIGHT, FPS, settings.ladder, peak_bitrate_1080p=settings.peak_bitrate_1080p,
                        bufsize_factor=settings.bufsize_factor)
    return settings, rungs


def _x264_args(settings, rung) -> list[str]:  # type: ignore[no-untyped-def]
    """The pipeline's encoder settings as ffmpeg options (encoder.encoder_options)."""
    gop = round(settings.segment_duration * FPS)
    return ["-c:v", "libx264", "-preset", settings.preset, "-crf", str(settings.crf),
            "-maxrate", str(rung.maxrate), "-bufsize", str(rung.bufsize), "-g", str(gop), "-keyint_min", str(gop),
            "-sc_threshold", "0", "-force_key_frames", f"expr:gte(t,n_forced*{settings.segment_duration:g})"]


def ffmpeg_single(source: Path, out: Path, settings, rungs) -> list[list[str]]:  # type: ignore[no-untyped-def]
    n = len(rungs)
    gop = round(settings.segment_duration * FPS)
    graph = f"[0:v]split={n}" + "".join(f"[s{i}]" for i in range(n)) + ";" + ";".join(
        f"[s{i}]scale={r.width}:{r.height}[o{i}]" for i, r in enumerate(rungs))
    cmd = ["ffmpeg", "-nostdin", "-y", "-v", "error", "-i", str(source), "-filter_complex", graph]
    for i in range(n):
        cmd += ["-map", f"[o{i}]"]
    cmd += ["-map", "0:a:0", "-c:v", "libx264", "-preset", settings.preset, "-crf", str(settings.crf),
            "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
            "-force_key_frames", f"expr:gte(t,n_forced*{settings.segment_duration:g})"]
    for i, rung in enumerate(rungs):
        cmd += [f"-maxrate:v:{i}", str(rung.maxrate), f"-bufsize:v:{i}", str(rung.bufsize)]
    stream_map = " ".join(f"v:{i},agroup:aud" for i in range(n)) + " a:0,agroup:aud"
    cmd += ["-c:a", "aac", "-b:a", str(settings.audio_bitrate),
            "-f", "hls", "-hls_time", f"{settings.segment_duration:g}", "-hls_playlist_type", "vod",
            "-hls_segment_type", "fmp4", "-master_pl_name", "master.m3u8", "-var_stream_map", stream_map,
            "-hls_segment_filename", str(out / "v%v" / "seg-%05d.m4s"), str(out / "v%v" / "index.m3u8")]
    return [cmd]


def ffmpeg_naive(source: Path, out: Path, settings, rungs) -> list[list[str]]:  # type: ignore[no-untyped-def]
    commands = []
    for i, rung in enumerate(rungs):
        folder = out / rung.name
        folder.mkdir(parents=True, exist_ok=True)
        cmd = ["ffmpeg", "-nostdin", "-y", "-v", "error", "-i", str(source), "-map", "0:v:0",
               "-vf", f"scale={rung.width}:{rung.height}", *_x264_args(settings, rung)]
        if i == 0:  # the audio rendition once, as the pipeline makes it once
            cmd += ["-map", "0:a:0", "-c:a", "aac", "-b:a", str(settings.audio_bitrate)]
        cmd += ["-f", "hls", "-hls_time", f"{settings.segment_duration:g}", "-hls_playlist_type", "vod",
                "-hls_segment_type", "fmp4", "-hls_segment_filename", str(folder / "seg-%05d.m4s"),
                str(folder / "index.m3u8")]
        commands.append(cmd)
    return commands


def streamgate_cmd(source: Path, out: Path, settings, rungs) -> list[list[str]]:  # type: ignore[no-untyped-def]
    exe = Path(sys.executable).with_name("streamgate")
    heights = ",".join(str(h) for h in settings.ladder)
    return [[str(exe), "--log-level", "WARNING", "transcode", str(source), "--out", str(out),
             "--renditions", heights, "--preset", settings.preset,
             "--segment-seconds", f"{settings.segment_duration:g}", "--no-progress"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each way (alternating); medians")
    parser.add_argument("--renditions", default="1080,720,480")
    parser.add_argument("--preset", default="veryfast")
    parser.add_argument("--quick", action="store_true", help="smoke run: one run of the 480p rung alone")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.renditions = 1, "480"
    if shutil.which("ffmpeg") is None:
        print("ffmpeg is not installed", file=sys.stderr)
        return 2
    source = standard_source()
    settings, rungs = ladder_plan([int(h) for h in args.renditions.split(",")], args.preset)
    frames = SECONDS * FPS
    ways = {"streamgate transcode": streamgate_cmd, "ffmpeg single decode": ffmpeg_single,
            "ffmpeg naive (1 per rung)": ffmpeg_naive}
    results: dict[str, list[Run]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory(prefix="sg-bench-") as tmp:
        for run in range(args.runs):
            for name, build in ways.items():
                out = Path(tmp) / f"{name.split()[0]}-{name.split()[1]}-{run}"
                out.mkdir(parents=True)
                for rung in rungs:
                    (out / rung.name).mkdir(exist_ok=True)
                for i in range(len(rungs) + 1):
                    (out / f"v{i}").mkdir(exist_ok=True)
                load = os.getloadavg()[0]
                result = measure(build(source, out, settings, rungs), Path(tmp))
                status = "ok" if result.ok else f"FAILED {result.detail}"
                print(f"run {run + 1}/{args.runs} {name:28s} wall {result.wall:6.2f} s  cpu {result.cpu:6.2f} s  "
                      f"peak {result.peak_mib:7.1f} MiB  load {load:5.2f}  {status}", flush=True)
                results[name].append(result)
                shutil.rmtree(out, ignore_errors=True)
    print()
    print(f"source: {SECONDS} s {WIDTH}x{HEIGHT}@{FPS} H.264 + AAC; ladder {args.renditions} at {args.preset}; "
          f"{os.cpu_count()} CPUs; medians of {args.runs} alternating runs; "
          f"1-min load average before the runs (others' work shares the CPUs) shown per run")
    print("| way | wall s | CPU s | fps | peak MiB (PSS) |")
    print("|---|---:|---:|---:|---:|")
    medians = {}
    for name, runs in results.items():
        wall = statistics.median(r.wall for r in runs)
        cpu = statistics.median(r.cpu for r in runs)
        peak = statistics.median(r.peak_mib for r in runs)
        medians[name] = wall
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {frames / wall:.1f} | {peak:.0f} |")
    ours = medians["streamgate transcode"]
    print()
    print(f"streamgate / ffmpeg single decode (wall): {ours / medians['ffmpeg single decode']:.2f}x  (goal <= 1.00x)")
    print(f"streamgate / naive (wall):                {ours / medians['ffmpeg naive (1 per rung)']:.2f}x")
    cpu = {name: statistics.median(r.cpu for r in runs) for name, runs in results.items()}
    print(f"streamgate / ffmpeg single decode (CPU):  {cpu['streamgate transcode'] / cpu['ffmpeg single decode']:.2f}x")
    print(f"streamgate / naive (CPU):                 {cpu['streamgate transcode'] / cpu['ffmpeg naive (1 per rung)']:.2f}x")
    return 0 if all(r.ok for runs in results.values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
