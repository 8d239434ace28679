"""An edge on ``storage.backend: s3`` against the store itself and against nginx (issue 12).

One command (``make bench-storage-edge``): starts a real SeaweedFS (tests/storage_support.py),
``streamgate edge`` (one process, s3 backend, no Redis) and nginx (bench/edge.py's config) on
loopback, then, with one keep-alive client per server:

- cold: a 1 MiB segment no tier holds yet, fetched through the edge (memory -> disk cache ->
  object store), against a direct GetObject of the same size from SeaweedFS; time to last byte,
  median over ``--rounds`` fresh objects. Goal: edge <= 1.25x the direct GET.
- warm: the same segments again, now answered from the edge's disk cache (sendfile), against
  nginx serving the same bytes from disk. Goal: edge throughput >= 0.9x nginx's.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from storage_support import start_seaweedfs, stop_seaweedfs  # noqa: E402

from edge import free_port, start_edge, start_nginx, wait_http  # noqa: E402

SIZE = 2**20
PREFIX = "bench-storage-edge"


def ttlb(conn: http.client.HTTPConnection, path: str) -> float:
    started = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200 or len(body) != SIZE:
        raise SystemExit(f"GET {path}: {response.status}, {len(body)} bytes")
    return elapsed


def catalogue(data_dir: Path) -> None:
    """The benchmark's video in the edge's catalog: with the s3 backend an edge plays only what it holds."""
    import asyncio

    from streamgate.common import layout
    from streamgate.edge.catalog import SqliteCatalog, Video

    async def create() -> None:
        (data_dir / "state").mkdir(parents=True, exist_ok=True)
        catalog = SqliteCatalog(data_dir / "state" / layout.EDGE_DB)
        try:
            await catalog.create(Video(id=PREFIX, created_at=time.time(), status="ready"))
        finally:
            await catalog.close()

    asyncio.run(create())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="fresh 1 MiB objects for the cold runs")
    parser.add_argument("--warm-requests", type=int, default=300, help="requests per warm run")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 cold objects, 20 warm requests")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.warm_requests = 3, 20
    if shutil.which("nginx") is None:
        raise SystemExit("nginx is not installed (make bench-deps)")
    import botocore.session

    root = Path(tempfile.mkdtemp(prefix="sg-bench-storage-edge-"))
    root.chmod(0o755)  # nginx workers run as an unprivileged user when started by root
    procs: list[subprocess.Popen[bytes]] = []
    weed = server = None
    try:
        weed, server = start_seaweedfs(root / "weed")
        client = botocore.session.get_session().create_client(
            "s3", endpoint_url=server.endpoint, region_name=server.region,
            aws_access_key_id=server.access_key_id, aws_secret_access_key=server.secret_access_key)
        media = root / "nginx-media"
        keys = []
        for r in range(args.rounds):
            data = os.urandom(SIZE)
            rel = f"{PREFIX}/720p/{r}.m4s"
            client.put_object(Bucket=server.bucket, Key=f"media/{rel}", Body=data)
            (media / PREFIX / "720p").mkdir(parents=True, exist_ok=True)
            (media / rel).write_bytes(data)
            keys.append(rel)
        data_dir = root / "edge"
        data_dir.mkdir()
        catalogue(data_dir)
        ports = {"edge": free_port(), "nginx": free_port()}
        procs.append(start_edge(
            data_dir, ports["edge"], 1,
            STREAMGATE__STORAGE__BACKEND="s3", S3_ENDPOINT=server.endpoint, S3_BUCKET=server.bucket,
            AWS_ACCESS_KEY_ID=server.access_key_id, AWS_SECRET_ACCESS_KEY=server.secret_access_key,
            AWS_REGION=server.region,
            # Only the disk cache may answer the warm run: no copy of a 1 MiB object in memory.
            STREAMGATE__EDGE__HOT_OBJECT_MAX_SIZE="64KiB"))
        procs.append(start_nginx(root, media, ports["nginx"], 1))
        wait_http(f"http://127.0.0.1:{ports['edge']}/health", procs[0])
        wait_http(f"http://127.0.0.1:{ports['nginx']}/videos/{keys[0]}", procs[1])
        edge = http.client.HTTPConnection("127.0.0.1", ports["edge"])
        nginx = http.client.HTTPConnection("127.0.0.1", ports["nginx"])

        def direct(rel: str) -> float:
            started = time.perf_counter()
            body = client.get_object(Bucket=server.bucket, Key=f"media/{rel}")["Body"].read()
            elapsed = time.perf_counter() - started
            assert len(body) == SIZE
            return elapsed

        direct(keys[0])  # the client's connection pool warmed, as the edge's is after its first GET
        cold_edge, cold_direct = [], []
        for n, rel in enumerate(keys):
            # Alternate which one reads the object first: SeaweedFS's own page cache then favours
            # each side equally.
            if n % 2:
                cold_direct.append(direct(rel))
                cold_edge.append(ttlb(edge, f"/videos/{rel}"))
            else:
                cold_edge.append(ttlb(edge, f"/videos/{rel}"))
                cold_direct.append(direct(rel))
        warm = {"edge": [], "nginx": []}
        for _ in range(3):  # alternated, so a noisy neighbour hurts both
            for name, conn in (("edge", edge), ("nginx", nginx)):
                started = time.perf_counter()
                for i in range(args.warm_requests):
                    ttlb(conn, f"/videos/{keys[i % len(keys)]}")
                warm[name].append(args.warm_requests * SIZE / (time.perf_counter() - started))
        edge.close()
        nginx.close()
        client.close()
        c_edge, c_direct = statistics.median(cold_edge), statistics.median(cold_direct)
        w_edge, w_nginx = statistics.median(warm["edge"]), statistics.median(warm["nginx"])
        print(f"cold miss, 1 MiB, time to last byte (median of {args.rounds}): "
              f"edge {c_edge * 1000:.2f} ms, direct SeaweedFS GET {c_direct * 1000:.2f} ms, "
              f"edge/direct {c_edge / c_direct:.2f}x (goal <= 1.25x)")
        print(f"warm (disk cache), 1 MiB, throughput (median of 3 x {args.warm_requests}): "
              f"edge {w_edge / 2**20:.0f} MiB/s, nginx {w_nginx / 2**20:.0f} MiB/s, "
              f"edge/nginx {w_edge / w_nginx:.2f}x (goal >= 0.9x)")
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM if proc is procs[0] else signal.SIGQUIT)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if weed is not None and server is not None:
            stop_seaweedfs(weed, server)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
