"""kill -9 of ``streamgate run``: the orphaned edge stops taking connections at once (issue 14).

Before: the edge's parent-death SIGTERM started a graceful stop that first waited for its copies
to drain (up to ``server.shutdown_timeout``, 30 s) with its own listener still open, so the port
kept accepting uploads whose bytes no supervisor would ever see stored and transcoded.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from urllib.parse import urlsplit

from support import alive, descendants_of, title_of, wait_until

PATCH_HEAD = ("PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
              "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
              "Content-Length: {length}\r\n\r\n")


def create_upload(url: str, length: int) -> str:
    request = urllib.request.Request(url + "/api/v1/uploads", method="POST", headers={
        "Tus-Resumable": "1.0.0", "Upload-Length": str(length),
        "Upload-Metadata": "filename dC5tcDQ="})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        return urlsplit(response.headers["Location"]).path


def refuses(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except OSError:
        return True


def test_the_edge_port_refuses_connections_soon_after_the_supervisor_is_killed(run_platform) -> None:
    # Two edge processes: a copy with a request in flight is what kept the port open.
    platform = run_platform(STREAMGATE__SERVER__WORKERS="2", STREAMGATE__SERVER__SHUTDOWN_TIMEOUT="60s")
    host, port = "127.0.0.1", int(urlsplit(platform.url).port or 0)
    edges = wait_until(lambda: (found if len(found := [p for p in descendants_of(platform.proc.pid)
                                                        if title_of(p) == "streamgate edge"]) >= 2 else None),
                       timeout=30, what="both edge processes")
    tree = descendants_of(platform.proc.pid)
    # Stalled PATCHes in flight, spread over both processes by SO_REUSEPORT.
    stalled = []
    for _ in range(8):
        path = create_upload(platform.url, 1 << 20)
        conn = socket.create_connection((host, port), timeout=10)
        conn.sendall(PATCH_HEAD.format(path=path, length=1 << 20).encode() + b"x" * 4096)
        stalled.append(conn)
    try:
        platform.proc.kill()
        platform.proc.wait(10)
        killed_at = time.monotonic()
        wait_until(lambda: refuses(host, port), timeout=30, interval=0.1, what="the edge port to refuse")
        refused_after = time.monotonic() - killed_at
        assert refused_after < 5, f"the orphaned edge accepted connections for {refused_after:.1f}s"
        wait_until(lambda: not any(alive(p) for p in edges), timeout=30, what="the edge processes to exit")
        exited_after = time.monotonic() - killed_at
        assert exited_after < 10, f"the orphaned edge lingered {exited_after:.1f}s"
        # Every other role notices too: the whole tree is gone soon after.
        wait_until(lambda: not any(alive(p) for p in tree), timeout=30, what="every role to exit")
        all_after = time.monotonic() - killed_at
        assert all_after < 10, f"orphaned roles lingered {all_after:.1f}s"
        print(f"every role gone after {all_after:.2f}s")
        print(f"port refused after {refused_after:.2f}s, edge processes gone after {exited_after:.2f}s")
    finally:
        for conn in stalled:
            conn.close()
