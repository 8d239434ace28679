"""Benchmark: upload intake (issue 18, goal 8): tus PATCH throughput with sha256 checksums.

    .venv/bin/python bench/uploads.py [--mib 128] [--chunk-mib 8] [--rounds 3] [--no-tus-node] [--quick]

Three ways of taking the same chunks (random bytes, made once), in alternating rounds, medians:

- reference: a plain write + fsync of each chunk to a file in the edge's uploads folder;
- streamgate: a `streamgate edge --workers 1` process (local disk backend, SQLite upload state),
  one tus upload, one PATCH per chunk with ``Upload-Checksum: sha256`` (digests computed before
  the clock starts); the upload is one byte longer than what is sent, so no completion (and no
  broker) enters the figure, and it is terminated after;
- @tus/server (npm, with @tus/file-store) installed into bench/.cache/tus-node (not the repo's
  package.json) and run by node on the same disk, the same PATCHes without the checksum header
  (it does not implement the checksum extension) -- printed beside, not a goal.

The goal is streamgate >= 0.8x the reference in MiB/s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import free_port, load_line, ratio_line, stop  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TUS_NODE = REPO / "bench" / ".cache" / "tus-node"
TUS_SERVER_JS = """
import http from 'node:http';
import { Server } from '@tus/server';
import { FileStore } from '@tus/file-store';
const [directory, port] = process.argv.slice(2);
const tus = new Server({ path: '/files', datastore: new FileStore({ directory }) });
http.createServer((req, res) => tus.handle(req, res)).listen(Number(port), '127.0.0.1',
  () => console.log('ready'));
"""


def reference(folder: Path, chunks: list[bytes]) -> float:
    path = folder / "reference.bin"
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    path.unlink()
    return sum(map(len, chunks)) / elapsed / 2**20


async def tus_upload(base: str, create_path: str, chunks: list[bytes], digests: list[str] | None) -> float:
    import aiohttp

    total = sum(map(len, chunks))
    meta = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in
                    (("filename", "bench.mp4"), ("title", "bench")))
    async with aiohttp.ClientSession() as session:
        async with session.post(base + create_path, headers={
                "Tus-Resumable": "1.0.0", "Upload-Length": str(total + 1), "Upload-Metadata": meta}) as r:
            if r.status != 201:
                raise RuntimeError(f"create: {r.status} {await r.text()}")
            location = r.headers["Location"]
        url = location if location.startswith("http") else base + location
        offset = 0
        t0 = time.perf_counter()
        for i, chunk in enumerate(chunks):
            headers = {"Tus-Resumable": "1.0.0", "Upload-Offset": str(offset),
                       "Content-Type": "application/offset+octet-stream"}
            if digests is not None:
                headers["Upload-Checksum"] = f"sha256 {digests[i]}"
            async with session.patch(url, data=chunk, headers=headers) as r:
                if r.status != 204:
                    raise RuntimeError(f"PATCH at {offset}: {r.status} {await r.text()}")
                offset = int(r.headers["Upload-Offset"])
        elapsed = time.perf_counter() - t0
        async with session.delete(url, headers={"Tus-Resumable": "1.0.0"}) as r:
            if r.status != 204:
                raise RuntimeError(f"DELETE: {r.status}")
    return total / elapsed / 2**20


def wait_http(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:g}s") from None
            time.sleep(0.1)


def start_edge(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    cfg = data / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "storage": {"data_dir": str(data), "min_free_space": 0},
        "server": {"host": "127.0.0.1", "port": port, "workers": 1},
        "auth": {"required": False}, "edge": {"rate_limit": {"enabled": False}},
        "metrics": {"enabled": False}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGATE")}
    env["STREAMGATE_CONFIG"] = str(cfg)
    log = data / "edge.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamgate", "edge", "--workers", "1"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=data)
    url = f"http://127.0.0.1:{port}"
    wait_http(proc, url + "/health", log)
    return proc, url


def install_tus_node() -> bool:
    if (TUS_NODE / "node_modules" / "@tus" / "server").exists():
        return True
    if shutil.which("npm") is None or shutil.which("node") is None:
        print("node/npm missing: @tus/server skipped", file=sys.stderr)
        return False
    TUS_NODE.mkdir(parents=True, exist_ok=True)
    (TUS_NODE.parent / ".gitignore").write_text("*\n")
    (TUS_NODE / "package.json").write_text('{"name": "tus-bench", "private": true, "type": "module"}\n')
    print("installing @tus/server and @tus/file-store with npm (once, into bench/.cache/tus-node) ...", flush=True)
    run = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error",
                          "@tus/server", "@tus/file-store"], cwd=TUS_NODE, capture_output=True, text=True)
    if run.returncode != 0:
        print(f"npm install failed: @tus/server skipped\n{run.stderr[-1500:]}", file=sys.stderr)
        return False
    return True


def start_tus_node(data: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    store = data / "tus-node-files"
    store.mkdir(parents=True, exist_ok=True)
    (TUS_NODE / "server.mjs").write_text(TUS_SERVER_JS)
    log = data / "tus-node.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["node", str(TUS_NODE / "server.mjs"), str(store), str(port)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=TUS_NODE)
    url = f"http://127.0.0.1:{port}"
    wait_http(proc, url + "/files", log)
    version = subprocess.run(["node", "-p", "require('./node_modules/@tus/server/package.json').version"],
                             cwd=TUS_NODE, capture_output=True, text=True).stdout.strip()
    return proc, url, version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=128, help="MiB per upload")
    parser.add_argument("--chunk-mib", type=int, default=8, help="MiB per PATCH")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-tus-node", action="store_true", help="skip @tus/server")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 MiB in 1 MiB chunks, one round, "
                                                            "no @tus/server")
    args = parser.parse_args(argv)
    if args.quick:
        args.mib, args.chunk_mib, args.rounds, args.no_tus_node = 8, 1, 1, True
    print(load_line(), flush=True)
    chunks = [os.urandom(args.chunk_mib * 2**20) for _ in range(max(1, args.mib // args.chunk_mib))]
    digests = [base64.b64encode(hashlib.sha256(c).digest()).decode() for c in chunks]
    results: dict[str, list[float]] = {"write+fsync": [], "streamgate": []}
    procs: list[subprocess.Popen[bytes]] = []
    TUS_NODE.parent.mkdir(parents=True, exist_ok=True)
    (TUS_NODE.parent / ".gitignore").write_text("*\n")  # nothing made here lands in git
    with tempfile.TemporaryDirectory(prefix="uploads-", dir=TUS_NODE.parent) as tmp:
        data = Path(tmp)
        try:
            edge, edge_url = start_edge(data / "edge")
            procs.append(edge)
            tus_node = None
            if not args.no_tus_node and install_tus_node():
                node_proc, node_url, version = start_tus_node(data)
                procs.append(node_proc)
                tus_node = (node_url, version)
                results[f"@tus/server {version} (no checksum)"] = []
            uploads_dir = data / "edge" / "uploads"
            for n in range(args.rounds):
                row: dict[str, float] = {"write+fsync": reference(uploads_dir, chunks)}
                row["streamgate"] = asyncio.run(tus_upload(edge_url, "/api/v1/uploads", chunks, digests))
                if tus_node is not None:
                    row[f"@tus/server {tus_node[1]} (no checksum)"] = asyncio.run(
                        tus_upload(tus_node[0], "/files", chunks, None))
                for name, value in row.items():
                    results[name].append(value)
                print(f"round {n + 1}/{args.rounds}: " + " | ".join(f"{k} {v:7.1f} MiB/s" for k, v in row.items())
                      + f" | {load_line()}", flush=True)
        finally:
            for proc in procs:
                stop(proc)
    medians: dict[str, Any] = {k: statistics.median(v) for k, v in results.items() if v}
    print()
    print(f"{args.mib} MiB in {args.chunk_mib} MiB PATCHes (sha256 Upload-Checksum on streamgate), "
          f"medians of {args.rounds} alternating rounds; disk under {TUS_NODE.parent}")
    print("| way | MiB/s | / write+fsync |")
    print("|---|---:|---:|")
    for name, value in medians.items():
        print(f"| {name} | {value:.1f} | {value / medians['write+fsync']:.2f}x |")
    print()
    ratio = medians["streamgate"] / medians["write+fsync"]
    print(ratio_line("streamgate tus PATCH (sha256) / write+fsync", ratio, ">= 0.80x", ratio >= 0.8))
    for name, value in medians.items():
        if name.startswith("@tus"):
            print(ratio_line(f"{name} / write+fsync", value / medians["write+fsync"], "none: printed beside",
                             True))
    print(load_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
