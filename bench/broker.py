"""Benchmark: broker growth (issue 18, goal 6): submit throughput and the journal's size.

    .venv/bin/python bench/broker.py [--jobs 2000] [--clients 1,16] [--finished 100000] [--quick]

1. Submit throughput: a real `streamgate broker` process (SQLite journal, synchronous=FULL: an
   acknowledged submit is on disk) and C concurrent BrokerClients, each a ZeroMQ DEALER as the edges
   use, submitting jobs no worker takes. Reference, in the same invocation: the journal alone
   (SqliteJournal.save in a loop on the same disk: one fsynced commit per job, no sockets).
2. Journal size after N finished jobs: N records journaled as done (in batches), once with
   ``broker.journal_retention`` off and once pruning as the broker does (retention = the last tenth
   of the jobs), SQLite file plus WAL; and the Redis journal's record count with pruning.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import load_line, ratio_line, start_redis, stop  # noqa: E402


def _spec(n: int, tag: str) -> Any:
    from streamgate.common.protocol import JobSpec

    return JobSpec(job_id=f"{tag}-{n:07d}", source=f"/data/sources/{tag}-{n}/source.mp4",
                   out_dir=f"/data/media/{tag}-{n}", priority=n % 3, submitted_at=time.time())


async def journal_alone(path: Path, jobs: int) -> float:
    from streamgate.farm.journal import JobRecord, SqliteJournal

    journal = SqliteJournal(path)
    t0 = time.perf_counter()
    for n in range(jobs):
        await journal.save(JobRecord(spec=_spec(n, "ref")))
    elapsed = time.perf_counter() - t0
    await journal.close()
    return jobs / elapsed


async def submit_through_broker(endpoints: Any, jobs: int, clients: int, tag: str) -> float:
    from streamgate.common.broker_client import BrokerClient

    pool = [BrokerClient(endpoints, timeout_s=60) for _ in range(clients)]
    per = jobs // clients

    async def one(i: int, client: Any) -> None:
        for n in range(i * per, (i + 1) * per):
            reply = await client.submit(_spec(n, tag))
            if not reply.accepted:
                raise RuntimeError(f"submit refused: {reply.reason}")

    try:
        await pool[0].stats()  # connected before the clock starts
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, c) for i, c in enumerate(pool)))
        return per * clients / (time.perf_counter() - t0)
    finally:
        for client in pool:
            await client.close()


def start_broker(data: Path) -> tuple[subprocess.Popen[bytes], Any, Path]:
    from streamgate.common.config import config_from_tree

    tree = {"storage": {"data_dir": str(data), "min_free_space": 0},
            "transcoder": {"max_queue_size": 10**7}, "metrics": {"enabled": False}}
    cfg = data / "config.yaml"
    data.mkdir(parents=True, exist_ok=True)
    cfg.write_text(yaml.safe_dump(tree))
    config = config_from_tree(tree)
    log = data / "broker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamgate", "--config", str(cfg), "broker"],
                                stdout=out, stderr=subprocess.STDOUT)
    return proc, config, log


async def throughput(tmp: Path, jobs: int, clients: list[int]) -> None:
    from streamgate.common.broker_client import BrokerClient, BrokerUnavailable

    ref = await journal_alone(tmp / "ref" / "journal.sqlite3", jobs)
    print(f"journal alone (SqliteJournal.save, one fsynced commit per job): {ref:8.0f} jobs/s | {load_line()}",
          flush=True)
    proc, config, log = start_broker(tmp / "b")
    try:
        probe = BrokerClient(config.broker_endpoints, timeout_s=2)
        deadline = time.monotonic() + 60
        while True:
            try:
                await probe.stats()
                break
            except BrokerUnavailable:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the broker did not start: {log.read_text()[-2000:]}") from None
        await probe.close()
        for c in clients:
            rate = await submit_through_broker(config.broker_endpoints, jobs, c, f"c{c}")
            print(f"broker submit, {c:2d} concurrent clients: {rate:8.0f} jobs/s | {load_line()}", flush=True)
            if c == 1:  # one client waits for each reply: nothing to share a commit with
                print(ratio_line("broker submit (1 client) / journal alone", rate / ref,
                                 "none: one client, one commit per job, plus the round trip", True))
            else:
                print(ratio_line(f"broker submit ({c} clients) / journal alone", rate / ref,
                                 ">= 1.00x with group commit", rate / ref >= 1.0))
    finally:
        proc.terminate()
        proc.wait(30)


def _db_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


async def journal_size(tmp: Path, finished: int) -> None:
    from streamgate.farm.journal import JobRecord, SqliteJournal

    batch = max(1, finished // 100)
    keep = finished // 10
    for prune in (False, True):
        path = tmp / f"size-{prune}" / "journal.sqlite3"
        journal = SqliteJournal(path)
        journal._db.execute("PRAGMA synchronous=OFF")  # size, not speed, is measured here
        t_prune = 0.0
        for start in range(0, finished, batch):
            journal._db.execute("BEGIN")
            for n in range(start, min(finished, start + batch)):
                record = JobRecord(spec=_spec(n, "fin"), state="done", attempts=1, elapsed_s=12.5)
                await journal.save(record)
                # updated_at is the job's order: retention keeps the newest ``keep`` of them.
                journal._db.execute("UPDATE jobs SET updated_at = ? WHERE job_id = ?", (float(n), record.job_id))
            journal._db.execute("COMMIT")
            if prune:
                t0 = time.perf_counter()
                end = min(finished, start + batch)
                while await journal.prune(float(end - keep)) >= 1000:
                    pass
                t_prune += time.perf_counter() - t0
        journal._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = journal._db.execute("SELECT count(*) FROM jobs").fetchone()[0]
        totals = await journal.totals()
        await journal.close()
        what = f"pruned to the newest {keep}" if prune else "retention off"
        print(f"SQLite journal after {finished} finished jobs, {what}: {_db_size(path) / 2**20:7.2f} MiB, "
              f"{rows} rows, totals.done {totals.done}" + (f", pruning took {t_prune:.2f} s" if prune else ""),
              flush=True)
        if prune:
            bounded = rows <= keep + batch
            print(ratio_line("SQLite journal rows kept / retention window", rows / keep, "<= 1.0x + one batch",
                             bounded))


async def redis_size(tmp: Path, finished: int) -> None:
    import redis.asyncio as aioredis

    from streamgate.farm.journal import JobRecord
    from streamgate.farm.journal_redis import RedisJournal

    proc, port = start_redis()
    client = aioredis.Redis(port=port)
    try:
        journal = RedisJournal(client, "bench:broker")
        keep = finished // 10
        batch = max(1, finished // 100)
        for start in range(0, finished, batch):
            await journal.save_many([JobRecord(spec=_spec(n, "fin"), state="done", elapsed_s=1.0)
                                     for n in range(start, min(finished, start + batch))])
            # Scores are wall-clock: keep the newest ``keep`` by pruning at the score of that rank.
            edge = await client.zrange("bench:broker:finished", -keep, -keep, withscores=True)
            if edge:
                while await journal.prune(edge[0][1]) >= 1000:
                    pass
        records = await client.hlen("bench:broker:jobs")
        memory = (await client.info("memory"))["used_memory"]
        totals = await journal.totals()
        print(f"Redis journal after {finished} finished jobs, pruned to the newest {keep}: {records} records, "
              f"used_memory {memory / 2**20:.1f} MiB, totals.done {totals.done}", flush=True)
        print(ratio_line("Redis journal records kept / retention window", records / keep, "<= 1.0x + one batch",
                         records <= keep + batch))
    finally:
        await client.aclose()
        stop(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs submitted per client count")
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--finished", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 jobs, 2000 finished")
    args = parser.parse_args(argv)
    jobs, finished = (64, 2000) if args.quick else (args.jobs, args.finished)
    clients = [int(c) for c in args.clients.split(",")]
    print(load_line())
    # ipc:// paths are limited to 107 bytes: a short temp dir.
    tmp = Path(tempfile.mkdtemp(prefix="sgb-", dir="/tmp"))
    try:
        asyncio.run(throughput(tmp, jobs, clients))
        asyncio.run(journal_size(tmp, finished))
        if shutil.which("redis-server"):
            asyncio.run(redis_size(tmp, finished))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(load_line())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
