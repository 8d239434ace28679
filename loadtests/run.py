"""`make loadtest`: a bounded headless locust run against a single node this script starts and seeds.

1. start `streamgate run` on a temp data dir and a free port (rate limits off: every virtual user
   shares 127.0.0.1, which no real audience does);
2. seed it: generated clips uploaded with tus (tuspy), then wait until each is ready;
3. run locust headless (-u/-r/-t bounded) in its own process (gevent stays out of this one);
4. print requests/s, failures and p50/p95/p99 per request type from locust's CSV, kept under
   loadtests/results/; exit 1 on any failure.

To load a fleet instead, run locust directly: see docs/deployment.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
T = TypeVar("T")


class LoadTestError(Exception):
    """The run could not be set up or did not pass; the message says which step."""


def wait_for(what: str, check: Callable[[], T], timeout: float, interval: float = 0.25) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LoadTestError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


class Node:
    """`streamgate run` in a temp directory; stopped with SIGTERM like an operator would."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="sg-loadtest-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = args.results / "streamgate-run.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGATE")}
        env.update({
            "STREAMGATE_CONFIG": str(REPO / "config.yaml"),
            "STREAMGATE_DATA_DIR": str(self.workdir / "data"),
            "SERVER_PORT": str(self.port),
            "AUTH_REQUIRED": "false",
            "STREAMGATE__SERVER__WORKERS": str(args.edge_workers),
            "STREAMGATE__EDGE__RATE_LIMIT__ENABLED": "false",
            "STREAMGATE__TRANSCODER__LADDER": json.dumps(args.ladder),
            "STREAMGATE__TRANSCODER__SEGMENT_DURATION": f"{args.segment_seconds}s",
        })
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "streamgate", "run"], env=env, cwd=self.workdir,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise LoadTestError(f"streamgate run exited {self.proc.returncode}; see {self.log_path}")
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def seed(node: Node, args: argparse.Namespace) -> list[str]:
    """Upload generated clips with tus and wait until the farm has made them playable."""
    from tusclient import client

    from streamgate.common.synth import make_video

    ids = []
    for i in range(args.videos):
        clip = make_video(node.workdir / f"seed-{i}.mp4", seconds=args.seconds, width=args.width,
                          height=args.height)
        with open(clip, "rb") as stream:  # a stream: tuspy leaks handles it opens from a path
            uploader = client.TusClient(node.url + "/api/v1/uploads").uploader(
                file_stream=stream, chunk_size=256 * 1024,
                metadata={"filename": clip.name, "title": f"Load test seed {i}"})
            uploader.upload()
        ids.append(uploader.url.rstrip("/").rsplit("/", 1)[-1])
        print(f"seeded {ids[-1]} ({clip.stat().st_size} bytes, {args.seconds}s {args.width}x{args.height})")

    def all_ready() -> bool:
        for video_id in ids:
            video = get_json(f"{node.url}/api/v1/videos/{video_id}")
            if video["status"] == "failed":
                raise LoadTestError(f"seed video {video_id} failed to transcode: {video.get('error')}")
            if video["status"] != "ready":
                return False
        return True

    started = time.monotonic()
    wait_for("the seed videos to be ready", all_ready, timeout=args.seed_timeout, interval=0.5)
    print(f"seed videos ready after {time.monotonic() - started:.1f}s")
    # What the locust uploaders send: a 1 s clip, made here so locust's process does no encoding.
    make_video(node.workdir / "upload.mp4", seconds=1.0, width=320, height=240)
    return ids


def run_locust(host: str, args: argparse.Namespace, prefix: Path, upload_file: Path) -> int:
    locust = shutil.which("locust", path=str(Path(sys.executable).parent)) or shutil.which("locust")
    if locust is None:
        raise LoadTestError("locust is not installed: pip install -e '.[load]' (make loadtest does)")
    env = {**os.environ, "LOADTEST_SPEEDUP": str(args.speedup), "LOADTEST_SEED": str(args.seed),
           "LOADTEST_BEHAVIOUR": str(prefix.with_name(prefix.name + "_behaviour.json")),
           "LOADTEST_UPLOAD_FILE": str(upload_file)}
    argv = [locust, "-f", str(HERE / "locustfile.py"), "--headless", "--host", host,
            "-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.run_time,
            "--stop-timeout", "10", "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING"]
    print("running:", " ".join(argv[1:]))
    with open(prefix.with_name(prefix.name + "_locust.log"), "wb") as log:
        return subprocess.run(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode


def summarize(stats_csv: Path) -> tuple[str, int, int]:
    """A table per request type from locust's *_stats.csv; returns (text, requests, failures)."""
    with open(stats_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    header = f"{'request':<38} {'reqs':>7} {'fails':>6} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}"
    lines = [header, "-" * len(header)]
    total = failures = 0
    for row in rows:
        name = row["Name"] if row["Name"] == "Aggregated" else f"{row['Type']} {row['Name']}"
        if row["Name"] == "Aggregated":
            lines.append("-" * len(header))
            total, failures = int(row["Request Count"]), int(row["Failure Count"])
        lines.append(f"{name[:38]:<38} {row['Request Count']:>7} {row['Failure Count']:>6} "
                     f"{float(row['Requests/s']):>7.1f} {row['50%']:>7} {row['95%']:>7} {row['99%']:>7}")
    return "\n".join(lines), total, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=float, default=5)
    parser.add_argument("--run-time", default="30s")
    parser.add_argument("--videos", type=int, default=3, help="seed videos")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each seed video")
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--ladder", type=lambda s: [int(h) for h in s.split(",")], default=[480, 360])
    parser.add_argument("--segment-seconds", type=float, default=2.0)
    parser.add_argument("--speedup", type=float, default=4.0, help="playback pace divisor")
    parser.add_argument("--edge-workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seed-timeout", type=float, default=300)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    prefix = args.results / time.strftime("%Y%m%d-%H%M%S")

    node = Node(args)
    try:
        wait_for("streamgate run /health", node.healthy, timeout=60)
        print(f"streamgate run on {node.url} (data in {node.workdir})")
        seed(node, args)
        code = run_locust(node.url, args, prefix, node.workdir / "upload.mp4")
    except LoadTestError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    finally:
        node.stop()
    stats = prefix.with_name(prefix.name + "_stats.csv")
    if not stats.exists():
        print(f"loadtest: locust wrote no stats (exit {code}); see {prefix}_locust.log", file=sys.stderr)
        return 2
    table, total, failures = summarize(stats)
    summary = (f"locust -u {args.users} -r {args.spawn_rate} -t {args.run_time} against streamgate run "
               f"({args.videos} seed videos, {args.seconds:g}s {args.width}x{args.height}, "
               f"ladder {args.ladder}, speedup {args.speedup:g})\n{table}\n")
    behaviour = prefix.with_name(prefix.name + "_behaviour.json")
    if behaviour.exists():
        summary += "users: " + ", ".join(f"{v} {k}" for k, v in json.loads(behaviour.read_text()).items()) + "\n"
    prefix.with_name(prefix.name + "_summary.txt").write_text(summary)
    print(summary)
    print(f"CSV: {prefix}_stats.csv, {prefix}_failures.csv; summary: {prefix}_summary.txt")
    if total == 0 or failures:
        print(f"loadtest: {failures} failure(s) in {total} requests", file=sys.stderr)
        return 1
    print(f"loadtest: {total} requests, zero failures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
