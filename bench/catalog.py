"""Benchmark: how `GET /api/v1/videos` grows with the catalog (issue 18, goal 5).

    .venv/bin/python bench/catalog.py [--sizes 1000,10000,100000] [--requests 300] [--quick]

For each backend (SQLite on one node, Redis in a fleet: edge/catalog.py) the catalog is grown to
each size (bulk-seeded with the records the tus POST would create: half public), and an
in-process edge (edge/server.py, the real app) answers sequential requests from a client in the
same process: the first page (``?limit=20``) and a deep page (the last one:
``?offset=total-20``). Printed per size: p50 and p99 in milliseconds.

The reference run is the smallest size in the same invocation: the ratio p99(largest) /
p99(smallest) is held against log(largest) / log(smallest) (no worse than logarithmic growth), and
p99 at the largest size against the 20 ms goal.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import free_port, load_line, percentile, ratio_line, start_redis, stop  # noqa: E402

PAGE = 20
GOAL_MS = 20.0


def _videos(start: int, stop: int) -> list[Any]:
    from streamgate.edge.catalog import Rendition, Video

    base = 1.7e9
    owners = [f"0x{n:040x}" for n in range(50)]
    return [Video(id=f"v{n:08d}", created_at=base + n, title=f"clip {n}", filename=f"clip-{n}.mp4",
                  owner=owners[n % len(owners)], visibility="public" if n % 2 == 0 else "private",
                  status="ready", progress=1.0, duration=10.0, size=12_345_678, sha256="ab" * 32,
                  renditions=[Rendition(name=f"{h}p", width=h * 16 // 9, height=h, bandwidth=h * 4000)
                              for h in (1080, 720, 480)], updated_at=base + n)
            for n in range(start, stop)]


async def _seed_sqlite(catalog: Any, start: int, stop: int) -> None:
    from streamgate.edge.catalog import _encode

    rows = [(v.id, v.created_at, v.status, v.owner, v.visibility, _encode(v)) for v in _videos(start, stop)]

    def seed(db: Any) -> None:  # on the catalog's own thread (common/sqlite.py SqliteThread)
        db.execute("BEGIN")
        db.executemany("INSERT INTO videos (id, created_at, status, owner, visibility, body)"
                       " VALUES (?, ?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")

    await catalog._db.call(seed)


async def _seed_redis(catalog: Any, start: int, stop: int) -> None:
    """What RedisCatalog.create writes, pipelined a thousand videos at a time."""
    from streamgate.edge.catalog import _encode

    videos = _videos(start, stop)
    for i in range(0, len(videos), 1000):
        async with catalog._r.pipeline(transaction=False) as pipe:
            for video in videos[i:i + 1000]:
                score = {video.id: video.created_at}
                pipe.set(catalog._key(video.id), _encode(video))
                pipe.zadd(catalog._index(None, False), score)
                pipe.zadd(catalog._index(video.owner, False), score)
                if video.visibility == "public":
                    pipe.zadd(catalog._index(None, True), score)
                    pipe.zadd(catalog._index(video.owner, True), score)
                pipe.sadd(catalog._status_key(video.status), video.id)
            await pipe.execute()


async def _timed(session: Any, url: str, n: int) -> tuple[list[float], dict[str, Any]]:
    samples = []
    body: dict[str, Any] = {}
    for _ in range(n):
        t0 = time.perf_counter()
        async with session.get(url) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"{url}: {resp.status} {body}")
        samples.append((time.perf_counter() - t0) * 1000)
    return samples, body


async def run_backend(backend: str, sizes: list[int], requests: int, tmp: Path) -> dict[int, dict[str, float]]:
    import aiohttp

    from streamgate.common.config import config_from_tree
    from streamgate.edge import stores
    from streamgate.edge.server import EdgeServer

    redis_proc = None
    tree: dict[str, Any] = {"storage": {"data_dir": str(tmp / backend)},
                            "server": {"host": "127.0.0.1", "port": free_port(), "workers": 1},
                            "auth": {"required": False},
                            "edge": {"rate_limit": {"enabled": False}}}
    if backend == "redis":
        redis_proc, port = start_redis()
        tree["cache"] = {"redis_url": f"redis://127.0.0.1:{port}/0"}
    server = None
    try:
        server = EdgeServer(config_from_tree(tree))
        await server.start()
        catalog = server.app[stores.CATALOG]
        seed = _seed_redis if backend == "redis" else _seed_sqlite
        base = f"http://127.0.0.1:{server.port}/api/v1/videos"
        results: dict[int, dict[str, float]] = {}
        have = 0
        async with aiohttp.ClientSession() as session:
            for size in sizes:
                t0 = time.perf_counter()
                await seed(catalog, have, size)
                have = size
                seeded = time.perf_counter() - t0
                await _timed(session, f"{base}?limit={PAGE}", 5)  # warm caches and the connection
                first, body = await _timed(session, f"{base}?limit={PAGE}", requests)
                total = body["total"]
                deep_url = f"{base}?limit={PAGE}&offset={max(0, total - PAGE)}"
                deep, deep_body = await _timed(session, deep_url, requests)
                # The same last page reached the way a client paging on does: the ``next`` link
                # of the page before it (a cursor on SQLite, a rank on Redis).
                _, before = await _timed(session, f"{base}?limit={PAGE}&offset={max(0, total - 2 * PAGE)}", 1)
                cursor, _ = await _timed(session, f"http://127.0.0.1:{server.port}{before['next']}", requests)
                if len(body["videos"]) != PAGE or not deep_body["videos"]:
                    raise RuntimeError(f"{backend} {size}: short pages ({len(body['videos'])}, "
                                       f"{len(deep_body['videos'])})")
                results[size] = {"first_p50": percentile(first, 50), "first_p99": percentile(first, 99),
                                 "deep_p50": percentile(deep, 50), "deep_p99": percentile(deep, 99),
                                 "next_p50": percentile(cursor, 50), "next_p99": percentile(cursor, 99)}
                r = results[size]
                print(f"{backend:6s} {size:>7d} videos (seeded in {seeded:5.1f} s): first page p50 "
                      f"{r['first_p50']:6.2f} ms p99 {r['first_p99']:6.2f} ms | deep page (offset {total - PAGE}) "
                      f"p50 {r['deep_p50']:6.2f} ms p99 {r['deep_p99']:6.2f} ms | same page by its next link p50 "
                      f"{r['next_p50']:6.2f} ms p99 {r['next_p99']:6.2f} ms | {load_line()}", flush=True)
        return results
    finally:
        if server is not None:
            await server.close()
        if redis_proc is not None:
            stop(redis_proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per page and size")
    parser.add_argument("--backends", default="sqlite,redis")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 and 2000 videos, 20 requests")
    args = parser.parse_args(argv)
    sizes = [200, 2000] if args.quick else [int(s) for s in args.sizes.split(",")]
    requests = 20 if args.quick else args.requests
    backends = args.backends.split(",")
    if "redis" in backends and shutil.which("redis-server") is None:
        print("redis-server is not installed: the Redis backend is skipped", file=sys.stderr)
        backends.remove("redis")
    print(load_line())

    with tempfile.TemporaryDirectory(prefix="sg-bench-catalog-") as tmp:
        table = {b: asyncio.run(run_backend(b, sizes, requests, Path(tmp))) for b in backends}
    small, large = sizes[0], sizes[-1]
    bound = math.log(large) / math.log(small)
    print()
    print(f"GET /api/v1/videos, {PAGE} per page, {requests} sequential requests per cell, client in the "
          "edge's process; ms")
    print("| backend | videos | first p50 | first p99 | deep (offset) p50 | deep (offset) p99 | deep (next link) p50 "
          "| deep (next link) p99 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for backend, rows in table.items():
        for size, r in rows.items():
            print(f"| {backend} | {size} | {r['first_p50']:.2f} | {r['first_p99']:.2f} | "
                  f"{r['deep_p50']:.2f} | {r['deep_p99']:.2f} | {r['next_p50']:.2f} | {r['next_p99']:.2f} |")
    print()
    for backend, rows in table.items():
        for page in ("first", "deep", "next"):
            growth = rows[large][f"{page}_p99"] / rows[small][f"{page}_p99"]
            met = growth <= bound

            label = {"first": "first page", "deep": "deep page by offset", "next": "deep page by next link"}[page]
            print(ratio_line(f"{backend} {label} p99 {large}/{small}", growth,
                             f"<= {bound:.2f}x, log({large})/log({small})", met))
            print(f"  p99 at {large}: {rows[large][f'{page}_p99']:.2f} ms (goal <= {GOAL_MS:g} ms at 100k) "
                  f"{'met' if rows[large][f'{page}_p99'] <= GOAL_MS else 'NOT met'}")
    print(load_line())
    return 0  # a goal not met is a finding printed above, not a failed run


if __name__ == "__main__":
    sys.exit(main())
