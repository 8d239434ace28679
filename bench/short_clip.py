"""Benchmark: short clips through a warm farm worker against the ffmpeg command line.

    .venv/bin/python bench/short_clip.py [--runs 3] [--seconds 10] [--jobs 1] [--workers 1]
    .venv/bin/python bench/short_clip.py --jobs 8 --workers 2      # goal 4 (bench/concurrency.py)

What users upload most are short phone clips, so a job's fixed costs (process starts, imports)
matter as much as its encode speed. A ``streamgate broker`` and a ``streamgate farm`` (the same
broker, pool and workers ``streamgate run`` starts) run on a throw-away data dir; once their
workers are up and idle, each run submits ``--jobs`` jobs of the same deterministic 10 s
1080p30 source and times from the first submit to the last job done. The reference is the
ffmpeg CLI's single-decode ladder (bench/transcode.py's command line) on the same source, the
same number of times with at most ``--workers`` at once. With ``--jobs 1``, ``streamgate
transcode`` (a cold process per job) is timed too, to show what the warm worker saves. The ways
alternate, so drift on a shared machine hits each alike; medians are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import transcode as ref  # noqa: E402  (bench/transcode.py: the reference command lines)
from report import load_line, ratio_line  # noqa: E402

REPO = ref.REPO


def short_source(seconds: int) -> Path:
    """The standard 1080p30 source (bench/transcode.py) cut to ``seconds`` (or repeated, for a
    longer one) by stream copy: the same pictures, made in a moment rather than re-synthesised."""
    if seconds == ref.SECONDS:
        return ref.standard_source()
    path = ref.CACHE / f"source-{ref.HEIGHT}p{ref.FPS}-{seconds}s.mp4"
    if not path.exists():
        standard = ref.standard_source()
        tmp = path.with_name(f".source-{seconds}.tmp.mp4")
        if seconds < ref.SECONDS:
            cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(standard), "-t", str(seconds)]
        else:
            listing = ref.CACHE / f".concat-{seconds}.txt"
            listing.write_text(f"file '{standard}'\n" * -(-seconds // ref.SECONDS))
            cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
                   "-t", str(seconds)]
        subprocess.run([*cmd, "-c", "copy", "-f", "mp4", str(tmp)], check=True)
        os.replace(tmp, path)
    return path


class FarmUnderTest:
    """``streamgate broker`` + ``streamgate farm`` on a data dir of their own."""

    def __init__(self, workers: int, renditions: list[int], preset: str, segment_s: float) -> None:
        import yaml

        self.dir = Path(tempfile.mkdtemp(prefix="sgbench-", dir="/tmp"))  # ipc:// paths are short
        tree = {
            "storage": {"data_dir": str(self.dir), "min_free_space": 0},
            "transcoder": {"worker_pool_size": workers, "ladder": renditions, "preset": preset,
                           "segment_duration": f"{segment_s:g}s", "task_timeout": "600s",
                           "scaling_policy": {"min_workers": workers, "max_workers": workers}},
            "metrics": {"enabled": False},
        }
        config = self.dir / "config.yaml"
        config.write_text(yaml.safe_dump(tree))
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGATE")}
        env["STREAMGATE_CONFIG"] = str(config)
        exe = [sys.executable, "-m", "streamgate", "--log-level", "WARNING"]
        self.procs = [subprocess.Popen([*exe, role], env=env, stdout=subprocess.DEVNULL,
                                       stderr=open(self.dir / f"{role}.log", "wb"))
                      for role in ("broker", "farm")]
        from streamgate.common.config import load_config

        self.config = load_config(str(config))
        self.workers = workers
        self.n = 0

    async def wait_idle(self, client, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                stats = await client.stats()
                if stats.idle_workers >= self.workers:
                    return
            except Exception:  # noqa: BLE001 - the broker is still starting
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the farm's workers did not come up; see {self.dir}/*.log")

    async def run_jobs(self, client, source: Path, count: int) -> tuple[float, list]:  # type: ignore[no-untyped-def]
        from streamgate.common.protocol import JobSpec

        ids = []
        started = time.monotonic()
        for _ in range(count):
            self.n += 1
            job_id = f"b{self.n}"
            ids.append(job_id)
            await client.submit(JobSpec(job_id=job_id, source=str(source),
                                        out_dir=str(self.dir / "media" / job_id), submitted_at=time.time()))
        results: dict[str, object] = {}
        while len(results) < count:
            for job_id in ids:
                if job_id in results:
                    continue
                info = await client.job(job_id)
                if info is not None and info.state in ("done", "failed", "cancelled"):
                    if info.state != "done":
                        raise RuntimeError(f"job {job_id} {info.state}: {info.reason}")
                    results[job_id] = info.result
            await asyncio.sleep(0.01)
        wall = time.monotonic() - started
        for job_id in ids:
            shutil.rmtree(self.dir / "media" / job_id, ignore_errors=True)
        return wall, [results[j] for j in ids]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def ffmpeg_batch(source: Path, tmp: Path, settings, rungs, count: int, parallel: int) -> ref.Run:  # type: ignore[no-untyped-def]
    """``count`` single-decode ffmpeg ladders, at most ``parallel`` at a time."""
    started = time.monotonic()
    cpu, ok, detail, peak = 0.0, True, "", 0.0
    pending = list(range(count))
    while pending:
        batch, pending = pending[:parallel], pending[parallel:]
        # A fresh batch only when the last one ended: simple, and slightly in ffmpeg's favour
        # over a queue only when the ladders take unequal times (they do not: same source).
        commands = []
        for i in batch:
            out = tmp / f"ffmpeg-{i}"
            for v in range(len(rungs) + 1):
                (out / f"v{v}").mkdir(parents=True, exist_ok=True)
            commands += ref.ffmpeg_single(source, out, settings, rungs)
        run = ref.measure(commands, tmp)
        cpu += run.cpu
        peak = max(peak, run.peak_mib)
        ok, detail = ok and run.ok, detail or run.detail
        for i in batch:
            shutil.rmtree(tmp / f"ffmpeg-{i}", ignore_errors=True)
    return ref.Run(time.monotonic() - started, cpu, peak, ok, detail)


async def bench(args: argparse.Namespace) -> int:
    from streamgate.common.broker_client import BrokerClient

    renditions = [int(h) for h in args.renditions.split(",")]
    source = short_source(args.seconds)
    settings, rungs = ref.ladder_plan(renditions, args.preset)
    farm = FarmUnderTest(args.workers, renditions, args.preset, settings.segment_duration)
    client = BrokerClient(farm.config.broker_endpoints, timeout_s=30)
    walls: dict[str, list[float]] = {"farm": [], "ffmpeg": [], "cli": []}
    stages: list[dict[str, float]] = []
    try:
        await farm.wait_idle(client)
        with tempfile.TemporaryDirectory(prefix="sg-short-") as tmp_name:
            tmp = Path(tmp_name)
            for run in range(args.runs):
                load = os.getloadavg()[0]
                await farm.wait_idle(client)
                wall, results = await farm.run_jobs(client, source, args.jobs)
                walls["farm"].append(wall)
                stages.extend(r.stage_seconds for r in results if r is not None)
                print(f"run {run + 1}/{args.runs} farm ({args.workers} warm workers) {args.jobs} jobs  "
                      f"wall {wall:6.2f} s  load {load:5.2f}", flush=True)
                load = os.getloadavg()[0]
                result = ffmpeg_batch(source, tmp, settings, rungs, args.jobs, args.workers)
                walls["ffmpeg"].append(result.wall)
                print(f"run {run + 1}/{args.runs} ffmpeg single decode x{args.jobs} (<= {args.workers} at once) "
                      f"wall {result.wall:6.2f} s  cpu {result.cpu:6.2f} s  load {load:5.2f}"
                      f"{'' if result.ok else '  FAILED ' + result.detail}", flush=True)
                if args.jobs == 1:
                    out = tmp / f"cli-{run}"
                    out.mkdir()
                    load = os.getloadavg()[0]
                    result = ref.measure(ref.streamgate_cmd(source, out, settings, rungs), tmp)
                    walls["cli"].append(result.wall)
                    print(f"run {run + 1}/{args.runs} streamgate transcode (cold process) "
                          f"wall {result.wall:6.2f} s  cpu {result.cpu:6.2f} s  load {load:5.2f}"
                          f"{'' if result.ok else '  FAILED ' + result.detail}", flush=True)
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        await client.close()
        farm.stop()
    farm_wall, ffmpeg_wall = statistics.median(walls["farm"]), statistics.median(walls["ffmpeg"])
    print()
    print(f"source: {args.seconds} s {ref.WIDTH}x{ref.HEIGHT}@{ref.FPS} H.264 + AAC; ladder {args.renditions} at "
          f"{args.preset}; {args.jobs} job(s), {args.workers} worker(s); {os.cpu_count()} CPUs; "
          f"medians of {args.runs} alternating runs; 1-min load average {os.getloadavg()[0]:.2f} at the end")
    if stages:
        keys = [k for k in stages[0] if not k.startswith("encode_cpu")]
        print("where a farm job's time goes (median s): " + ", ".join(
            f"{k} {statistics.median(s.get(k, 0.0) for s in stages):.2f}" for k in keys))
    print(f"farm (warm worker) wall {farm_wall:.2f} s, ffmpeg single decode wall {ffmpeg_wall:.2f} s")
    goal = args.goal if args.goal is not None else (0.9 if args.jobs == 1 else 1.0)
    name = "farm warm worker / ffmpeg single decode wall" + (f" ({args.jobs} jobs, {args.workers} workers)"
                                                              if args.jobs > 1 else "")
    print(ratio_line(name, farm_wall / ffmpeg_wall, f"<= {goal:.2f}x", farm_wall / ffmpeg_wall <= goal))
    if walls["cli"]:
        cli = statistics.median(walls["cli"])
        print(f"streamgate transcode (cold) / ffmpeg single decode (wall): {cli / ffmpeg_wall:.2f}x")
    print(load_line())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1, help="jobs per run (submitted at once)")
    parser.add_argument("--workers", type=int, default=1, help="farm workers; ffmpeg runs at most this many at once")
    parser.add_argument("--renditions", default="1080,720,480")
    parser.add_argument("--preset", default="veryfast")
    parser.add_argument("--goal", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smoke run: one run, a 2 s clip, the 480p rung")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.seconds, args.renditions = 1, 2, "480"
    if shutil.which("ffmpeg") is None:
        print("ffmpeg is not installed", file=sys.stderr)
        return 2
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
