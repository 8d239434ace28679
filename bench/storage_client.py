"""aiobotocore 3.x vs obstore against a local SeaweedFS: which asyncio S3 client the s3 backend uses.

One command (``make bench-storage``): starts a real ``weed server`` on free loopback ports (the
test fixture's launcher, tests/storage_support.py), then times, in alternating rounds so neither
client gets the warmer server, with both clients on one event loop and one connection pool each:

- put of 1 MiB objects, one at a time and 16 at once
- get of those 1 MiB objects, one at a time and 16 at once
- a ranged get of 64 KiB from the middle of a 1 MiB object (an edge answering a Range request)
- a 64 MiB multipart upload (8 MiB parts, 4 in flight)

and our ``S3Store`` (aiobotocore under the ObjectStore interface) to show what the interface costs.
Prints medians of the rounds and the ratio obstore / aiobotocore (> 1: obstore faster).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from storage_support import SeaweedFS, start_seaweedfs, stop_seaweedfs  # noqa: E402

from streamgate.common.storage.s3 import _read_at  # noqa: E402

MiB = 2**20
OBJECT = os.urandom(MiB)
BIG = 64 * MiB


CPU: dict[str, float] = {}  # scenario -> client CPU seconds of the last timed run


async def timed(run: Callable[[], Awaitable[None]], scenario: str = "") -> float:
    """Wall time of ``run``; its CPU time (all threads of this process: obstore's Rust runtime
    too) goes to CPU[scenario]. On a shared machine CPU per op is the steadier figure."""
    cpu = time.process_time()
    started = time.perf_counter()
    await run()
    CPU[scenario] = time.process_time() - cpu
    return time.perf_counter() - started


class Aiobotocore:
    name = "aiobotocore"

    def __init__(self, server: SeaweedFS) -> None:
        self.server = server

    async def __aenter__(self) -> Aiobotocore:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        self._cm = get_session().create_client(
            "s3", endpoint_url=self.server.endpoint, region_name=self.server.region,
            aws_access_key_id=self.server.access_key_id, aws_secret_access_key=self.server.secret_access_key,
            config=AioConfig(s3={"addressing_style": "path"}, max_pool_connections=64,
                             request_checksum_calculation="when_required",
                             response_checksum_validation="when_required"))
        self.c = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._cm.__aexit__(None, None, None)

    async def put(self, key: str, data: bytes) -> None:
        await self.c.put_object(Bucket=self.server.bucket, Key=key, Body=data)

    async def get(self, key: str) -> bytes:
        reply = await self.c.get_object(Bucket=self.server.bucket, Key=key)
        async with reply["Body"] as body:
            return await body.read()

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        reply = await self.c.get_object(Bucket=self.server.bucket, Key=key, Range=f"bytes={start}-{end - 1}")
        async with reply["Body"] as body:
            return await body.read()

    async def multipart(self, key: str, path: Path, part_size: int) -> None:
        bucket = self.server.bucket
        upload = (await self.c.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
        gate = asyncio.Semaphore(4)
        size = BIG

        async def part(n: int) -> dict[str, object]:
            async with gate:
                data = await asyncio.to_thread(_read_at, path, (n - 1) * part_size, part_size)
                reply = await self.c.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n, Body=data)
                return {"ETag": reply["ETag"], "PartNumber": n}

        parts = await asyncio.gather(*(part(n) for n in range(1, -(-size // part_size) + 1)))
        await self.c.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                               MultipartUpload={"Parts": list(parts)})


class Obstore:
    name = "obstore"

    def __init__(self, server: SeaweedFS) -> None:
        self.server = server

    async def __aenter__(self) -> Obstore:
        from obstore.store import S3Store

        self.s = S3Store(self.server.bucket, endpoint=self.server.endpoint, region=self.server.region,
                         access_key_id=self.server.access_key_id,
                         secret_access_key=self.server.secret_access_key,
                         virtual_hosted_style_request=False, client_options={"allow_http": True})
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def put(self, key: str, data: bytes) -> None:
        import obstore

        await obstore.put_async(self.s, key, data, use_multipart=False)

    async def get(self, key: str) -> bytes:
        import obstore

        return bytes(await (await obstore.get_async(self.s, key)).bytes_async())

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        import obstore

        return bytes(await obstore.get_range_async(self.s, key, start=start, end=end))

    async def multipart(self, key: str, path: Path, part_size: int) -> None:
        import obstore

        await obstore.put_async(self.s, key, path, use_multipart=True, chunk_size=part_size, max_concurrency=4)


class OurS3Store:
    """aiobotocore behind the ObjectStore interface (timeouts, error mapping, key checks)."""

    name = "S3Store"

    def __init__(self, server: SeaweedFS) -> None:
        self.server = server

    async def __aenter__(self) -> OurS3Store:
        from streamgate.common.storage.s3 import S3Store

        srv = self.server
        self.s = await S3Store.open(endpoint=srv.endpoint, bucket=srv.bucket, region=srv.region,
                                    access_key_id=srv.access_key_id, secret_access_key=srv.secret_access_key)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.s.close()

    async def put(self, key: str, data: bytes) -> None:
        await self.s.put(key, data)

    async def get(self, key: str) -> bytes:
        return await self.s.get(key)

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        return await self.s.get(key, start, end)

    async def multipart(self, key: str, path: Path, part_size: int) -> None:
        self.s.part_size = part_size
        await self.s.put_file(key, path)


async def scenarios(client, n: int, big: Path) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Operations per second (MiB/s for the multipart upload) of one client, one round."""
    tag = client.name
    keys = [f"bench/{tag}/obj-{i}" for i in range(n)]
    out: dict[str, float] = {}

    async def seq_put() -> None:
        for k in keys:
            await client.put(k, OBJECT)

    async def par(op: Callable[[str], Awaitable[object]]) -> None:
        gate = asyncio.Semaphore(16)

        async def one(k: str) -> None:
            async with gate:
                await op(k)

        await asyncio.gather(*(one(k) for k in keys))

    async def seq_get() -> None:
        for k in keys:
            assert len(await client.get(k)) == MiB

    async def ranged() -> None:
        for k in keys:
            assert len(await client.get_range(k, MiB // 2, MiB // 2 + 64 * 1024)) == 64 * 1024

    runs: list[tuple[str, Callable[[], Awaitable[None]], float]] = [
        ("put 1 MiB (1 at a time)", seq_put, n),
        ("put 1 MiB (16 at once)", lambda: par(lambda k: client.put(k, OBJECT)), n),
        ("get 1 MiB (1 at a time)", seq_get, n),
        ("get 1 MiB (16 at once)", lambda: par(client.get), n),
        ("ranged get 64 KiB", ranged, n),
        ("multipart 64 MiB, MiB", lambda: client.multipart(f"bench/{tag}/big", big, 8 * MiB), BIG / MiB),
    ]
    for name, call, units in runs:
        wall = await timed(call, name)
        out[f"{name}/s"] = units / wall
        out[f"{name}: client CPU ms per"] = CPU[name] * 1000 / units
    return out


async def run(server: SeaweedFS, rounds: int, n: int, big: Path) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {}
    async with Aiobotocore(server) as a, Obstore(server) as o, OurS3Store(server) as s:
        clients = [a, o, s]
        for c in clients:  # warm connections and the server's volumes
            await c.put("bench/warm", OBJECT)
            await c.get("bench/warm")
        for r in range(rounds):
            order = clients if r % 2 == 0 else list(reversed(clients))
            for c in order:
                for name, value in (await scenarios(c, n, big)).items():
                    results.setdefault(name, {}).setdefault(c.name, []).append(value)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--objects", type=int, default=64, help="1 MiB objects per scenario")
    parser.add_argument("--quick", action="store_true", help="smoke run: one round of 4 objects")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.objects = 1, 4
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        work = Path(tmp)
        big = work / "big.bin"
        big.write_bytes(os.urandom(BIG))
        proc, server = start_seaweedfs(work / "weed")
        print(f"SeaweedFS {server.endpoint} up in {server.startup_s:.1f}s; "
              f"{args.rounds} rounds x {args.objects} objects, medians", flush=True)
        try:
            results = asyncio.run(run(server, args.rounds, args.objects, big))
        finally:
            stop_seaweedfs(proc, server)
    print("Rates: higher is better; CPU: lower is better. Ratios: obstore or S3Store over aiobotocore.")
    print(f"{'scenario':48} {'aiobotocore':>12} {'obstore':>10} {'S3Store':>10} {'obstore/aiobc':>14} {'S3Store/aiobc':>14}")
    for name, by in results.items():
        a, o, s = (statistics.median(by[k]) for k in ("aiobotocore", "obstore", "S3Store"))
        print(f"{name:48} {a:12.2f} {o:10.2f} {s:10.2f} {o / a:14.2f} {s / a:14.2f}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
