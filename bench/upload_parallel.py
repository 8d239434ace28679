"""``streamgate upload`` into a disk-backed edge: 1 part vs N parallel parts (tus concatenation),
against a plain ``dd``-style write + fsync of the same bytes to the same disk.

One command (``make bench-upload-parallel``): starts a real ``streamgate edge`` process (single
node, ``storage.backend: disk``, default rate limits) on loopback, writes a ``--size`` file
(default 1 GiB) of incompressible bytes, then times in alternating rounds:

- write: the bytes written in 4 MiB blocks to a new file beside the edge's data, then fsync
- 1 part: ``streamgate upload FILE --no-wait`` (tuspy, 4 MiB PATCHes with sha1 checksums)
- N parts: ``streamgate upload FILE --no-wait --parallel N`` (N partial uploads at once, then the
  final one that joins them)

Each upload is timed until the CLI returns, i.e. until the source is in place and hashed.
Prints medians, MiB/s and the ratios 1-part / write and N-part / 1-part (issue 17 aims at
>= 0.7 and >= 1.5 when the disk allows). ``--quick``: 64 MiB, one round.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import report  # noqa: E402

MiB = 2**20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(data_dir: Path, port: int, workers: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGATE")}
    env.update({"STREAMGATE_DATA_DIR": str(data_dir), "SERVER_PORT": str(port),
                "STREAMGATE_CONFIG": str(REPO / "config.yaml"), "AUTH_REQUIRED": "false",
                "STREAMGATE__SERVER__WORKERS": str(workers),
                "STREAMGATE__METRICS__ENABLED": "false",
                "STREAMGATE__UPLOADS__MAX_SIZE": "64GiB",
                "STREAMGATE__SERVER__CONTROL_PORT": str(_free_port())})
    return env


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the edge exited {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)  # polling a starting process for the bench's operator
    raise SystemExit("the edge did not become healthy")


def _make_file(path: Path, size: int) -> None:
    block = os.urandom(4 * MiB)
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(left, len(block))
            out.write(block[:n] if left == n else os.urandom(n))
            left -= n


def _plain_write(source: Path, target: Path) -> float:
    """dd-style: read the file (page cache, as the upload's client does) and write it + fsync."""
    start = time.perf_counter()
    with open(source, "rb") as src, open(target, "wb") as out:
        while block := src.read(4 * MiB):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    elapsed = time.perf_counter() - start
    target.unlink()
    return elapsed


def _upload(url: str, path: Path, parts: int, env: dict[str, str], scratch: Path) -> float:
    argv = [sys.executable, "-m", "streamgate", "upload", str(path), "--no-wait", "--server", url,
            "--wallet-key", str(scratch / "wallet.key")]
    if parts > 1:
        argv += ["--parallel", str(parts)]
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"streamgate upload failed:\n{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="MiB to upload (default 1024)")
    parser.add_argument("--parts", type=int, default=4, help="parallel parts (default 4)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="edge processes (0: one per CPU)")
    parser.add_argument("--dir", type=Path, default=None, help="where the data goes (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="64 MiB, one round")
    args = parser.parse_args()
    if args.quick:
        args.size, args.rounds = 64, 1
    root = Path(tempfile.mkdtemp(prefix="bench-upload-", dir=args.dir))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = _env(root / "data", port, args.workers)
    log = open(root / "edge.log", "wb")  # noqa: SIM115  (closed at the end)
    edge = subprocess.Popen([sys.executable, "-m", "streamgate", "edge", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(url, edge)
        source = root / "input.bin"
        _make_file(source, args.size * MiB)
        times: dict[str, list[float]] = {"write": [], "1 part": [], f"{args.parts} parts": []}
        for _ in range(args.rounds):
            times["write"].append(_plain_write(source, root / "data" / "plain.bin"))
            times["1 part"].append(_upload(url, source, 1, env, root))
            times[f"{args.parts} parts"].append(_upload(url, source, args.parts, env, root))
            shutil.rmtree(root / "data" / "sources", ignore_errors=True)  # keep the disk from filling
        medians = {k: statistics.median(v) for k, v in times.items()}
        print(f"{args.size} MiB on loopback, disk backend, {args.rounds} round(s), medians:")
        for name, seconds in medians.items():
            print(f"  {name:>10}: {seconds:7.2f} s  {args.size / seconds:8.1f} MiB/s")
        one, many = medians["1 part"], medians[f"{args.parts} parts"]
        single, parallel = medians["write"] / one, one / many
        print(report.ratio_line("1 part / write+fsync", single, ">= 0.7x", single >= 0.7))
        print(report.ratio_line(f"{args.parts} parts / 1 part", parallel, ">= 1.5x when the disk allows",
                                parallel >= 1.5))
        print(report.load_line())
    finally:
        edge.send_signal(signal.SIGTERM)
        edge.wait(60)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
