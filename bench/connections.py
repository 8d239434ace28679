"""Memory per idle keep-alive connection: the edge against nginx on the same tree.

One command (``make bench-connections``): builds bench/edge.py's tree, starts nginx
(worker_connections raised to fit) and ``streamgate edge`` with the same process count, then from
this one process (RLIMIT_NOFILE raised to its hard limit, which the servers inherit) opens N
connections to each in turn, sends each one GET of a 1 KiB playlist with keep-alive, reads the
answer and leaves the connection open and idle. The figure is the growth of the server's process
tree RSS (sum of VmRSS over the master and its workers) from before the connections to after, per
connection, and the edge's figure over nginx's. The servers are measured one at a time so each
has the machine's memory to itself; the client closes with RST (SO_LINGER 0), leaving no
TIME_WAIT to exhaust the ephemeral ports between the two.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from edge import build_tree, free_port, start_edge, start_nginx, tree_pids, wait_http  # noqa: E402

GOAL = 3.0  # issue 18 goal 7: at most 3x nginx's memory per connection


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def settle(pids: list[int], seconds: float = 1.0) -> int:
    """RSS once it stops moving (the server may still be finishing answers)."""
    last = rss_bytes(pids)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(seconds)
        now = rss_bytes(pids)
        if abs(now - last) < 64 * 1024:
            return now
        last = now
    return last


def open_idle(port: int, path: str, count: int) -> list[socket.socket]:
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n"
               "Accept: */*\r\n\r\n").encode()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            socks.append(s)
            s.sendall(request)
            read_answer(s)
    except BaseException:
        close_all(socks)
        raise
    return socks


def read_answer(s: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("server closed a connection before answering")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"unexpected answer: {head[:80]!r}")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("server closed a connection mid-answer")
        body += chunk


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def still_open(socks: list[socket.socket]) -> int:
    """Connections the server has not closed (a read would see EOF or RST on a closed one)."""
    alive = 0
    for s in socks:
        s.setblocking(False)
        try:
            got = s.recv(1)  # nothing was asked: any byte is as wrong as a close
            print(f"a connection read {got!r} while idle", file=sys.stderr)
        except BlockingIOError:
            alive += 1
        except OSError as exc:
            print(f"a connection failed while idle: {exc!r}", file=sys.stderr)
    return alive


def measure(name: str, port: int, pids: list[int], path: str, count: int) -> dict[str, float]:
    before = settle(pids)
    started = time.monotonic()
    socks = open_idle(port, path, count)
    try:
        opened_s = time.monotonic() - started
        after = settle(pids)
        alive = still_open(socks)
    finally:
        close_all(socks)
    if alive != count:
        raise SystemExit(f"{name}: only {alive} of {count} connections stayed open")
    per_conn = (after - before) / count
    print(f"{name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB with {count} idle connections "
          f"({per_conn:.0f} B each, opened in {opened_s:.1f}s)", file=sys.stderr)
    return {"before": before, "after": after, "per_conn": per_conn, "load": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1, help="processes per server")
    parser.add_argument("--edge-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the edge, e.g. STREAMGATE__EDGE__FAST_PATH=false")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1k connections")
    args = parser.parse_args(argv)
    if args.quick:
        args.connections = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 256
    if hard != resource.RLIM_INFINITY and hard < need:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} < {need}: raise it (ulimit -Hn) or pass fewer --connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the servers inherit it
    extra_env = dict(item.split("=", 1) for item in args.edge_env)

    with tempfile.TemporaryDirectory(prefix="sg-bench-conns-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # nginx workers run as an unprivileged user when started by root
        data = root / "data"
        path = build_tree(data / "media")["pl"][0]
        ports = {"nginx": free_port(), "edge": free_port()}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        results: dict[str, dict[str, float]] = {}
        try:
            procs["nginx"] = start_nginx(root, data / "media", ports["nginx"], args.workers,
                                         # nginx closes idle keep-alive connections once fewer than 1/16 of
                                         # its connection slots are free (ngx_drain_connections).
                                         worker_connections=2 * args.connections)
            # Idle connections must outlive the run: the edge closes them after client_timeout.
            procs["edge"] = start_edge(data, ports["edge"], args.workers,
                                       STREAMGATE__EDGE__CLIENT_TIMEOUT="3600", **extra_env)
            for name, proc in procs.items():
                wait_http(f"http://127.0.0.1:{ports[name]}{path}", proc)
            for name in ("nginx", "edge"):
                results[name] = measure(name, ports[name], tree_pids(procs[name].pid), path,
                                        args.connections)
        finally:
            for name, proc in procs.items():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGQUIT if name == "nginx" else signal.SIGTERM)
            for proc in procs.values():
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    nginx, edge = results["nginx"], results["edge"]
    ratio = edge["per_conn"] / max(1.0, nginx["per_conn"])
    loads = [r["load"] for r in results.values()]
    print(f"\nidle keep-alive connections: {args.connections} per server, {args.workers} process(es) each, "
          "one client process, RSS of each server's process tree\n")
    print("| server | RSS before | RSS with connections | per connection | edge/nginx | goal | machine load avg |")
    print("|---|---|---|---|---|---|---|")
    for name, row in results.items():
        ratio_cell = f"{ratio:.2f}x" if name == "edge" else "-"
        goal_cell = f"<= {GOAL:g}x" if name == "edge" else "-"
        print(f"| {name} | {row['before'] / 2**20:.1f} MiB | {row['after'] / 2**20:.1f} MiB | "
              f"{row['per_conn']:.0f} B | {ratio_cell} | {goal_cell} | {min(loads):.1f}-{max(loads):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
