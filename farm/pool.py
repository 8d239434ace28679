"""The farm pool: a supervisor process that runs worker processes and keeps them healthy.

Shaped after uvicorn's ``supervisors/multiprocess.py``: the pool runs no CPU work of its own; it
starts workers (``spawn``, not daemonic: each worker's pipeline starts encoder processes), pings
each over a pipe every ``transcoder.health_check_interval`` and kills one that does not answer
within another interval (a hung loop), replaces workers that die, and scales the count with the
broker's queue per ``transcoder.scaling_policy`` (see ``scaling.py``), retiring idle workers only.

SIGTERM drains: every worker stops taking jobs, finishes or hands back its run within
``transcoder.drain_timeout`` (plus ``abort_grace`` for the cancel to land); what is still alive
after that is killed. One summary line at the end.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from streamgate.common.broker_client import BrokerClient, BrokerError, BrokerUnavailable
from streamgate.common.config import Config
from streamgate.farm.scaling import desired_workers
from streamgate.farm.worker import DEFAULT_RUNNER, worker_process

log = logging.getLogger("streamgate.pool")

TICK_S = 0.1
STARTUP_TIMEOUT_S = 60


class WorkerHandle:
    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.state = "starting"  # starting, connecting, idle, busy (as the worker reports it)
        self.started = time.monotonic()
        self.ping_sent: float | None = None
        self.last_ping = 0.0
        self.retiring = False
        self.killed = False

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid


class Pool:
    def __init__(self, config: Config, *, runner: str = DEFAULT_RUNNER, metrics: Any = None,
                 client: BrokerClient | None = None) -> None:
        self.config = config
        self.runner = runner
        self.metrics = metrics
        self.client = client
        self.policy = config.transcoder.scaling_policy
        self.health_s = float(config.transcoder.health_check_interval)
        self._mp = multiprocessing.get_context("spawn")
        self.workers: list[WorkerHandle] = []
        self.started_total = 0
        self.replaced = 0
        self.killed_hung = 0
        self.stopping = False

    @property
    def initial_workers(self) -> int:
        return max(self.policy.min_workers, min(self.policy.max_workers,
                                                self.config.transcoder.worker_pool_size))

    def live(self) -> list[WorkerHandle]:
        return [w for w in self.workers if not w.retiring]

    # -- processes -----------------------------------------------------------------------------

    def start_worker(self) -> WorkerHandle:
        parent, child = self._mp.Pipe()
        process = self._mp.Process(
            target=worker_process, name="farm-worker", daemon=False,
            args=(self.config, child, self.runner, os.getpid(), None, self.metrics is not None),
        )
        process.start()
        child.close()
        handle = WorkerHandle(process, parent)
        self.workers.append(handle)
        self.started_total += 1
        log.info("pool: started worker pid %d (%d workers)", handle.pid, len(self.live()))
        return handle

    def retire(self, handle: WorkerHandle) -> None:
        """Scale down: the worker drains (SIGTERM) and exits; it is not replaced."""
        handle.retiring = True
        self._signal(handle, signal.SIGTERM)
        log.info("pool: retiring idle worker pid %d", handle.pid)

    def _signal(self, handle: WorkerHandle, sig: int) -> None:
        try:
            os.kill(handle.pid, sig)
        except ProcessLookupError:
            pass

    def reap(self) -> None:
        """Collect exited workers; replace those that did not leave on purpose."""
        for handle in [w for w in self.workers if w.process.exitcode is not None]:
            self.workers.remove(handle)
            handle.conn.close()
            handle.process.join()
            if self.metrics is not None:
                from streamgate.common.metrics import mark_process_dead

                mark_process_dead(handle.pid)
            if handle.retiring or self.stopping:
                continue
            log.warning("pool: worker pid %d exited with %s; replacing it", handle.pid,
                        handle.process.exitcode)
            self.replaced += 1
            self.start_worker()

    def read_pipes(self) -> None:
        for handle in self.workers:
            try:
                while handle.conn.poll():
                    kind, state = handle.conn.recv()
                    handle.state = state
                    if kind == "pong":
                        handle.ping_sent = None
            except (EOFError, OSError):
                pass  # it died: reap() sees it

    def check_health(self, now: float) -> None:
        """Ping every worker each health interval; one that has not answered within an interval
        is hung (a blocked loop cannot heartbeat either): kill it, reap() replaces it."""
        for handle in self.workers:
            if handle.killed:
                continue
            if handle.state == "starting":
                # Importing and connecting (slow on a busy machine): not pinged yet, but bounded.
                if now - handle.started > STARTUP_TIMEOUT_S:
                    log.error("pool: worker pid %d did not start within %ds; killing it", handle.pid,
                              STARTUP_TIMEOUT_S)
                    handle.killed = True
                    self._signal(handle, signal.SIGKILL)
                continue
            if handle.ping_sent is None:
                if now - handle.started >= self.health_s and now - handle.last_ping >= self.health_s:
                    try:
                        handle.conn.send("ping")
                    except (OSError, ValueError):
                        continue
                    handle.ping_sent = handle.last_ping = now
            elif now - handle.ping_sent > self.health_s:
                log.error("pool: worker pid %d did not answer a ping for %.1fs; killing it",
                          handle.pid, now - handle.ping_sent)
                handle.killed = True
                self.killed_hung += 1
                self._signal(handle, signal.SIGKILL)

    async def scale(self) -> None:
        if self.client is None:
            return
        try:
            stats = await self.client.stats()
        except (BrokerUnavailable, BrokerError) as exc:
            log.debug("pool: no broker figures, no scaling this turn: %s", exc)
            return
        live = self.live()
        busy = sum(1 for w in live if w.state == "busy")
        want = desired_workers(self.policy, queue_length=stats.queue_length, workers=len(live),
                               busy=busy)
        self.converge(want, f"queue {stats.queue_length}")

    def converge(self, want: int, why: str) -> None:
        """Start workers up to ``want``, or retire idle ones down to it; busy workers are never retired."""
        live = self.live()
        if want > len(live):
            log.info("pool: %s: scaling up %d -> %d workers", why, len(live), want)
            for _ in range(want - len(live)):
                self.start_worker()
        elif want < len(live):
            idle = [w for w in live if w.state == "idle"]
            for handle in idle[: len(live) - want]:
                self.retire(handle)

    # -- life ----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, ready: Any = None) -> None:
        for _ in range(self.initial_workers):
            self.start_worker()
        if ready is not None:
            ready()
        next_scale = time.monotonic() + float(self.policy.check_interval)
        try:
            while not stop.is_set():
                now = time.monotonic()
                self.read_pipes()
                self.reap()
                self.check_health(now)
                if now >= next_scale:
                    next_scale = now + float(self.policy.check_interval)
                    await self.scale()
                if self.metrics is not None:
                    self.metrics.workers.set(len(self.live()))
                try:
                    await asyncio.wait_for(stop.wait(), TICK_S)
                except TimeoutError:
                    pass
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Drain every worker (SIGTERM), then kill what outlives the drain."""
        self.stopping = True
        for handle in self.workers:
            self._signal(handle, signal.SIGTERM)
        transcoder = self.config.transcoder
        deadline = time.monotonic() + float(transcoder.drain_timeout) + float(transcoder.abort_grace) + 2
        while (alive := [w.process.sentinel for w in self.workers if w.process.exitcode is None]):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.to_thread(multiprocessing.connection.wait, alive, left)
        killed = 0
        for handle in self.workers:
            if handle.process.exitcode is None:
                killed += 1
                self._signal(handle, signal.SIGKILL)
        stopped = len(self.workers)
        for handle in self.workers:
            await asyncio.to_thread(handle.process.join, 5)
        self.reap()
        log.info("pool stopped: %d workers drained, %d killed after the drain timeout; %d started, "
                 "%d replaced, %d hung killed", stopped - killed, killed, self.started_total,
                 self.replaced, self.killed_hung)


async def serve(ctx: Any, runner: str = DEFAULT_RUNNER) -> None:
    """The ``farm`` role (run by common.service.run_service)."""
    from streamgate.farm.metrics import farm_metrics

    config = ctx.config
    client = BrokerClient(config.broker_endpoints, timeout_s=max(1.0, float(config.broker.heartbeat_interval)))
    pool = Pool(config, runner=runner, metrics=farm_metrics() if config.metrics.enabled else None,
                client=client)
    try:
        await pool.run(ctx.stop, ready=lambda: ctx.ready(f"farm pool: {len(pool.workers)} workers"))
    finally:
        await client.close()
