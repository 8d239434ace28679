"""Edge delivery against nginx on the same tree, same process count, loaded by wrk on loopback.

One command (``make bench-edge``): builds a tree of many videos (1 MiB and 200 KiB segments,
1 KiB playlists), starts nginx (sendfile on, access_log off, worker_processes = N, a temp
nginx.conf, run as a non-daemon child) and ``streamgate edge --workers N``, plus a second edge
with no local media whose every answer comes from Redis, then loads them in alternation with
wrk and a Lua script rotating over the URLs. Reports medians of the rounds, the ratio against
nginx, and server CPU per request from /proc/<pid>/stat deltas of every server process.
"""

from __future__ import annotations

import argparse
import asyncio
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

CLK_TCK = os.sysconf("SC_CLK_TCK")
VIDEOS = 8
FILES_PER_CLASS = 8

SCENARIOS = [
    # name, file pattern, metric, goal ratio vs nginx
    ("1 MiB segments", "1m", "bytes", 0.9),
    ("200 KiB segments", "200k", "bytes", 0.6),
    ("1 KiB playlists", "pl", "requests", 0.2),
    ("Redis-hit 1 KiB", "pl", "requests", 0.5),  # issue 18 goal 7: vs nginx from disk
    # Not a goal: the same edge without the file in its default configuration, where a Redis
    # record is also kept in the memory tier for the object's max-age (what a fleet's edge does).
    ("Redis + memory tier 1 KiB", "pl", "requests", 0.0),
]

LUA = """
local paths = {}
for line in io.lines("%(urls)s") do paths[#paths + 1] = line end
local counter = 0
setup = function(thread)
  thread:set("offset", counter * 7)
  counter = counter + 1
end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[((i + offset) %% #paths) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%d %%d\\n", summary.requests, summary.bytes,
    summary.duration, summary.errors.status, summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_tree(media: Path) -> dict[str, list[str]]:
    urls: dict[str, list[str]] = {"1m": [], "200k": [], "pl": []}
    for v in range(VIDEOS):
        vid = f"bench-{v}"
        folder = media / vid / "720p"
        folder.mkdir(parents=True)
        for i in range(FILES_PER_CLASS):
            (folder / f"{i}.m4s").write_bytes(os.urandom(2**20))
            (folder / f"{100 + i}.m4s").write_bytes(os.urandom(200 * 1024))
            lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:4",
                     "#EXT-X-PLAYLIST-TYPE:VOD", '#EXT-X-MAP:URI="init.mp4"']
            n = 0
            while len("\n".join(lines)) < 1000:
                lines += ["#EXTINF:4.000,", f"{n}.m4s"]
                n += 1
            lines.append("#EXT-X-ENDLIST")
            (folder / f"p{i}.m3u8").write_text("\n".join(lines) + "\n")
            urls["1m"].append(f"/videos/{vid}/720p/{i}.m4s")
            urls["200k"].append(f"/videos/{vid}/720p/{100 + i}.m4s")
            urls["pl"].append(f"/videos/{vid}/720p/p{i}.m3u8")
    return urls


def start_nginx(root: Path, media: Path, port: int, workers: int,
                worker_connections: int = 4096) -> subprocess.Popen[bytes]:
    prefix = root / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
worker_processes {workers};
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile {worker_connections + 64};
events {{ worker_connections {worker_connections}; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp; fastcgi_temp_path {prefix}/tmp;
  uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
  types {{ application/vnd.apple.mpegurl m3u8; video/mp4 m4s mp4; }}
  server {{
    listen 127.0.0.1:{port} reuseport;
    location /videos/ {{ alias {media}/; add_header Cache-Control "public, max-age=31536000, immutable"; }}
  }}
}}
""")
    return subprocess.Popen(["nginx", "-c", str(conf), "-p", str(prefix)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_edge(data: Path, port: int, workers: int, **env: str) -> subprocess.Popen[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGATE")}
    full_env.update({"STREAMGATE_DATA_DIR": str(data), "SERVER_PORT": str(port),
                     "AUTH_REQUIRED": "false", "STREAMGATE__SERVER__HOST": "127.0.0.1", **env})
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "streamgate", "--log-level", "WARNING", "edge",
                             "--workers", str(workers)], env=full_env,
                            stdout=subprocess.DEVNULL, stderr=open(data / "edge.log", "wb"))


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server for {url} exited with {proc.returncode}: {proc.args}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout}s: {proc.args}")


def tree_pids(root_pid: int) -> list[int]:
    """The process and all its descendants (nginx workers, edge workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


def run_wrk(base: str, urls_file: Path, lua: Path, seconds: float, threads: int, conns: int,
            pids: list[int]) -> dict[str, float]:
    before = cpu_ticks(pids)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "-s", str(lua), base],
                         capture_output=True, text=True, timeout=seconds + 60)
    after = cpu_ticks(pids)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        raise SystemExit(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")
    requests, nbytes, duration_us, bad_status, socket_errors = map(int, line.split()[1:])
    seconds_run = duration_us / 1e6
    return {"rps": requests / seconds_run, "bps": nbytes / seconds_run, "requests": requests,
            "cpu_us": (after - before) / CLK_TCK * 1e6 / max(1, requests),
            "bad": bad_status, "errors": socket_errors, "load": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes per server")
    # Short runs, many rounds: on a shared machine the load swings within seconds, and
    # alternating often puts both servers under the same swings.
    parser.add_argument("--seconds", type=float, default=3.0, help="wrk duration per run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--only", action="append", metavar="LOAD",
                        help="run only loads whose name contains this (repeatable): 1 MiB, 200 KiB, playlists, Redis")
    parser.add_argument("--edge-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the edges, e.g. STREAMGATE__EDGE__FAST_PATH=false")
    parser.add_argument("--quick", action="store_true", help="smoke run: one round of 1 s per load")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 1, 1.0
    extra_env = dict(item.split("=", 1) for item in args.edge_env)
    for tool in ("nginx", "wrk", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench-edge needs {tool} on PATH")

    with tempfile.TemporaryDirectory(prefix="sg-bench-edge-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # nginx workers run as an unprivileged user when started by root
        data = root / "data"
        urls = build_tree(data / "media")
        lua_files = {}
        for key, paths in urls.items():
            (root / f"{key}.txt").write_text("\n".join(paths) + "\n")
            lua = root / f"{key}.lua"
            lua.write_text(LUA % {"urls": root / f"{key}.txt"})
            lua_files[key] = lua
        redis_sock = root / "redis.sock"
        redis = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(redis_sock),
                                  "--save", "", "--appendonly", "no", "--dir", str(root)],
                                 stdout=subprocess.DEVNULL)
        ports = {"nginx": free_port(), "edge": free_port(), "redis-edge": free_port(), "hot-edge": free_port()}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            procs["nginx"] = start_nginx(root, data / "media", ports["nginx"], args.workers)
            videos = sorted({url.split("/")[2] for url in urls["pl"]})
            asyncio.run(catalogue(videos, data=data))  # before the edge opens its SQLite file
            procs["edge"] = start_edge(data, ports["edge"], args.workers, **extra_env)
            # The Redis-hit edge: no media of its own, no memory tier, so Redis answers each request.
            redis_data = root / "redis-data"
            redis_data.mkdir()
            procs["redis-edge"] = start_edge(redis_data, ports["redis-edge"], args.workers,
                                             REDIS_URL=f"unix://{redis_sock}",
                                             **{**extra_env, "STREAMGATE__EDGE__MEMORY_CACHE_SIZE": "0"})
            hot_data = root / "hot-data"
            hot_data.mkdir()
            procs["hot-edge"] = start_edge(hot_data, ports["hot-edge"], args.workers,
                                           REDIS_URL=f"unix://{redis_sock}", **extra_env)
            probe = urls["pl"][0]
            tiered = ("redis-edge", "hot-edge")
            for name, proc in procs.items():
                wait_http(f"http://127.0.0.1:{ports[name]}{'/health' if name in tiered else probe}", proc)
            fill_redis(redis_sock, data / "media", urls["pl"])
            asyncio.run(catalogue(videos, redis_sock=redis_sock))
            for name in tiered:
                wait_http(f"http://127.0.0.1:{ports[name]}{probe}", procs[name])
            pids = {name: tree_pids(proc.pid) for name, proc in procs.items()}
            results = bench(args, ports, pids, lua_files)
        finally:
            for proc in [*procs.values(), redis]:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM if proc is not procs.get("nginx") else signal.SIGQUIT)
            for proc in [*procs.values(), redis]:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    report(args, results)
    return 0


async def catalogue(videos: list[str], data: Path | None = None, redis_sock: Path | None = None) -> None:
    """Record the bench's videos as public and ready, as a finished upload would.

    The fast path answers only for a video the catalog knows as public (an unknown one may have
    been deleted on another edge): uncatalogued files would measure the full path's 404 route.
    """
    from streamgate.common.config import config_from_tree
    from streamgate.common.redis_keys import RedisKeys
    from streamgate.edge.catalog import Catalog, RedisCatalog, SqliteCatalog, Video
    from streamgate.edge.stores import sqlite_path

    client = None
    catalog: Catalog
    if redis_sock is not None:
        import redis.asyncio

        client = redis.asyncio.Redis(unix_socket_path=str(redis_sock))
        catalog = RedisCatalog(client, RedisKeys().records)
    else:
        assert data is not None
        path = sqlite_path(config_from_tree({"storage": {"data_dir": str(data)}}))
        path.parent.mkdir(parents=True, exist_ok=True)
        catalog = SqliteCatalog(path)
    try:
        for n, vid in enumerate(videos):
            await catalog.create(Video(id=vid, created_at=time.time() + n, title=vid, status="ready",
                                       progress=1.0, visibility="public"))
    finally:
        await catalog.close()
        if client is not None:
            await client.aclose()


def fill_redis(sock: Path, media: Path, paths: list[str]) -> None:
    """Put the playlists in Redis exactly as an edge's origin pull would."""
    import redis

    from streamgate.common.config import EdgeConfig
    from streamgate.common.redis_keys import RedisKeys
    from streamgate.edge.playback import names as media_rules
    from streamgate.edge.playback.hotcache import HotRecord, _encode

    client = redis.Redis(unix_socket_path=str(sock))
    for path in paths:
        key = path.removeprefix("/videos/")
        file = media / key
        body = file.read_bytes()
        st = file.stat()
        record = HotRecord(body, media_rules.make_etag(st.st_size, st.st_mtime_ns),
                           media_rules.content_type(key.split("/", 1)[1]),
                           media_rules.cache_control(key, False, EdgeConfig()),
                           media_rules.http_date(st.st_mtime))
        client.set(RedisKeys().hot + key, _encode(record), ex=3600)
    client.close()


def bench(args: argparse.Namespace, ports: dict[str, int], pids: dict[str, list[int]],
          lua_files: dict[str, Path]) -> list[dict[str, object]]:
    results = []
    for name, key, metric, goal in SCENARIOS:
        if args.only and not any(part.lower() in name.lower() for part in args.only):
            continue
        edge = "hot-edge" if "memory" in name else "redis-edge" if name.startswith("Redis") else "edge"
        servers = ["nginx", edge]
        runs: dict[str, list[dict[str, float]]] = {s: [] for s in servers}
        # Warm both (page cache, open-file caches), then alternate, switching who goes first.
        for server in servers:
            run_wrk(f"http://127.0.0.1:{ports[server]}", Path(), lua_files[key], 1, args.threads,
                    args.connections, pids[server])
        for round_ in range(args.rounds):
            order = servers if round_ % 2 == 0 else servers[::-1]
            for server in order:
                runs[server].append(run_wrk(f"http://127.0.0.1:{ports[server]}", Path(), lua_files[key],
                                            args.seconds, args.threads, args.connections, pids[server]))
        row: dict[str, object] = {"name": name, "metric": metric, "goal": goal}
        for server, label in zip(servers, ("nginx", "edge"), strict=True):
            value_key = "bps" if metric == "bytes" else "rps"
            row[label] = statistics.median(r[value_key] for r in runs[server])
            row[f"{label}_cpu"] = statistics.median(r["cpu_us"] for r in runs[server])
            row[f"{label}_bad"] = sum(r["bad"] + r["errors"] for r in runs[server])
        loads = [r["load"] for server in servers for r in runs[server]]
        row["load"] = f"{min(loads):.1f}-{max(loads):.1f}"
        row["ratio"] = row["edge"] / row["nginx"]  # type: ignore[operator]
        results.append(row)
        print(f"{name}: nginx {fmt(row['nginx'], metric)}  edge {fmt(row['edge'], metric)}  "
              f"ratio {row['ratio']:.2f}", file=sys.stderr)
    return results


def fmt(value: object, metric: str) -> str:
    v = float(value)  # type: ignore[arg-type]
    return f"{v / 1e9:.2f} GB/s" if metric == "bytes" else f"{v / 1e3:.1f}k req/s"


def report(args: argparse.Namespace, results: list[dict[str, object]]) -> None:
    print(f"\nedge vs nginx, {args.workers} processes each, wrk -t{args.threads} -c{args.connections}, "
          f"{args.rounds} alternating rounds x {args.seconds:g}s (medians), loopback, wrk on the same cores\n")
    print("| load | nginx | edge | edge/nginx | goal | nginx CPU/req | edge CPU/req | errors | machine load avg |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in results:
        metric = str(row["metric"])
        goal = f">= {row['goal']}x" if row["goal"] else "-"
        print(f"| {row['name']} | {fmt(row['nginx'], metric)} | {fmt(row['edge'], metric)} | "
              f"{row['ratio']:.2f}x | {goal} | {row['nginx_cpu']:.0f} us | {row['edge_cpu']:.0f} us | "
              f"{row['nginx_bad']}/{row['edge_bad']} | {row['load']} |")
    print("\nThe Redis-hit row compares the edge answering every request from Redis (no local media,"
          " memory tier off) with nginx serving the same playlists from disk; the Redis + memory tier"
          " row is the same edge in its default configuration (a Redis record is also kept in memory"
          " for its max-age).")


if __name__ == "__main__":
    raise SystemExit(main())
