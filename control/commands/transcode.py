"""``streamgate transcode``: the farm pipeline run locally on one file, with a progress bar."""

from __future__ import annotations

import argparse
import sys

from streamgate.common.config import Config

HELP = "Run the transcode pipeline locally (no broker) on INPUT into --out DIR."


def _heights(text: str) -> list[int]:
    try:
        heights = [int(part.strip().rstrip("p")) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"renditions are heights like 1080,720,480: {exc}") from exc
    if not heights or any(h < 2 for h in heights):
        raise argparse.ArgumentTypeError("renditions are heights like 1080,720,480")
    return heights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT", help="source video file")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--renditions", type=_heights, metavar="H,H,...",
                        help="ladder heights (default: transcoder.ladder), e.g. 1080,720,480")
    parser.add_argument("--preset", help="x264 preset (default: transcoder.preset)")
    parser.add_argument("--segment-seconds", type=float, metavar="S",
                        help="segment duration (default: transcoder.segment_duration)")
    parser.add_argument("--crf", type=int, help="x264 CRF (default: transcoder.crf)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs and CI)")


def main(args: argparse.Namespace, config: Config) -> int:
    import signal
    import threading
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from streamgate.common.media import TranscodeProgress
    from streamgate.farm.pipeline.transcode import TranscodeError, TranscodeSettings, transcode

    console = Console(stderr=True)
    settings = TranscodeSettings.from_config(
        config.transcoder, ladder=args.renditions, preset=args.preset,
        segment_duration=args.segment_seconds, crf=args.crf)
    cancel = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        cancel.set()  # only a flag: the pipeline notices it within a fraction of a second

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[frames]}"), TextColumn("{task.fields[fps]}"), TimeRemainingColumn(),
        console=console, disable=args.no_progress, transient=False,
    )
    task = progress.add_task("probe", total=1.0, frames="", fps="")

    def on_progress(p: TranscodeProgress) -> None:
        frames = f"{p.frames_done}/{p.frames_total} frames" if p.frames_total else ""
        fps = f"{p.fps:.1f} fps" if p.fps else ""
        progress.update(task, completed=p.fraction, description=p.stage, frames=frames, fps=fps)

    try:
        with progress:
            result = transcode(Path(args.input), Path(args.out), settings, on_progress=on_progress, cancel=cancel)
    except TranscodeError as exc:
        console.print(f"[red]transcode failed:[/red] {exc.reason}")
        return 130 if cancel.is_set() else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    out = Console()
    ladder = Table(title=f"{args.out}: {result.duration_s:.2f} s, {result.frames} frames")
    for column in ("rendition", "size", "bandwidth", "average", "codecs", "segments"):
        ladder.add_column(column)
    for r in result.renditions + ([result.audio_rendition] if result.audio_rendition else []):
        size = f"{r.width}x{r.height}" if r.width else "audio"
        ladder.add_row(r.name, size, f"{r.bandwidth / 1e6:.2f} Mb/s", f"{r.average_bandwidth / 1e6:.2f} Mb/s",
                       r.codecs, str(r.segments))
    out.print(ladder)
    stages = Table(title="stage timings")
    stages.add_column("stage")
    stages.add_column("seconds", justify="right")
    for name, seconds in result.stage_seconds.items():
        stages.add_row(name, f"{seconds:.2f}")
    total = result.stage_seconds.get("total", 0.0)
    if total:
        stages.caption = f"{result.frames / total:.1f} fps overall"
    out.print(stages)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
