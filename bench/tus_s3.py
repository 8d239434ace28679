"""A tus upload into the object store through an edge vs a plain multipart upload to the store.

One command (``make bench-tus-s3``): starts a real ``weed server`` (tests/storage_support.py) and
an edge (in process, ``storage.backend: s3``, SQLite upload state), then times in alternating
rounds a ``--size`` upload (default 200 MiB) two ways from the same process:

- tus: POST, then PATCH bodies of ``--chunk`` bytes (aiohttp, no checksum) to the edge, which
  puts them into the store as a multipart upload of ``storage.s3.part_size`` parts
- direct: the same bytes as a multipart upload of the same part size straight to SeaweedFS
  (our S3Store's put_file: aiobotocore, 4 parts in flight)

Prints medians and the ratio tus / direct throughput (issue 12 asks >= 0.8).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from storage_support import start_seaweedfs, stop_seaweedfs  # noqa: E402

from streamgate.common.config import config_from_tree  # noqa: E402
from streamgate.common.storage import open_store  # noqa: E402

MiB = 2**20
TUS = {"Tus-Resumable": "1.0.0"}


async def _tus(session: aiohttp.ClientSession, url: str, data: bytes, chunk: int) -> None:
    size = len(data)
    async with session.post(url + "/api/v1/uploads", headers={
            **TUS, "Upload-Length": str(size),
            "Upload-Metadata": "filename " + base64.b64encode(b"bench.bin").decode()}) as r:
        assert r.status == 201, await r.text()
        location = r.headers["Location"]
    offset = 0
    while offset < size:
        body = io.BytesIO(data[offset:offset + chunk])
        async with session.patch(location, data=body, headers={
                **TUS, "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream"}) as r:
            assert r.status == 204, await r.text()
            offset = int(r.headers["Upload-Offset"])


async def main(args: argparse.Namespace) -> None:
    from streamgate.edge.app import build_app

    size = args.size * MiB
    with tempfile.TemporaryDirectory(prefix="bench-tus-s3-") as tmp:
        work = Path(tmp)
        payload = work / "payload.bin"
        data = os.urandom(size)
        await asyncio.to_thread(payload.write_bytes, data)
        proc, server = await asyncio.to_thread(start_seaweedfs, work / "weed")
        try:
            storage = {"data_dir": str(work / "data"),
                       **server.storage_tree("bench", part_size=f"{args.part}MiB")}
            config = config_from_tree({
                "storage": storage, "auth": {"required": False},
                "edge": {"rate_limit": {"enabled": False}},
                "uploads": {"resubmit_interval": "1h", "sweep_interval": "1h", "max_size": "8GiB"},
                "metrics": {"enabled": False}})
            app = build_app(config)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            url = f"http://127.0.0.1:{port}"
            store = await open_store(config)
            tus_s: list[float] = []
            direct_s: list[float] = []
            try:
                async with aiohttp.ClientSession() as session:
                    for i in range(args.rounds):
                        for name in (("tus", "direct") if i % 2 == 0 else ("direct", "tus")):
                            started = time.perf_counter()
                            if name == "tus":
                                await _tus(session, url, data, args.chunk * MiB)
                                tus_s.append(time.perf_counter() - started)
                            else:
                                await store.put_file(f"bench/direct-{i}.bin", payload)
                                direct_s.append(time.perf_counter() - started)
            finally:
                await store.close()
                await runner.cleanup()
        finally:
            await asyncio.to_thread(stop_seaweedfs, proc, server)
    tus, direct = statistics.median(tus_s), statistics.median(direct_s)
    print(f"{args.size} MiB, part {args.part} MiB, PATCH {args.chunk} MiB, {args.rounds} rounds (medians)")
    print(f"tus through the edge: {tus:.2f} s  {args.size / tus:.1f} MiB/s")
    print(f"direct multipart:     {direct:.2f} s  {args.size / direct:.1f} MiB/s")
    print(f"ratio tus / direct throughput: {direct / tus:.2f}  (target >= 0.8)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=200, help="MiB uploaded each way")
    parser.add_argument("--part", type=int, default=8, help="part size in MiB (storage.s3.part_size)")
    parser.add_argument("--chunk", type=int, default=32, help="MiB per PATCH")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 16 MiB, one round")
    parsed = parser.parse_args()
    if parsed.quick:
        parsed.size, parsed.chunk, parsed.rounds = 16, 8, 1
    asyncio.run(main(parsed))
