"""The farm pool: a supervisor process that runs worker processes and keeps them healthy.

Shaped after uvicorn's ``supervisors/multiprocess.py``: the pool runs no CPU work of its own; it
starts workers (``spawn``, not daemonic: each worker's pipeline starts encoder processes), pings
each over a pipe every ``transcoder.health_check_interval`` and kills one that does not answer
within another interval (a hung loop), replaces workers that die after the restart backoff
(common/supervision.py: a worker crashing at start does not respawn every tick), and scales the
count with the broker's queue per ``transcoder.scaling_policy`` (see ``scaling.py``), retiring idle workers only.

SIGTERM drains: every worker stops taking jobs, finishes or hands back its run within
``transcoder.drain_timeout`` (plus ``abort_grace`` for the cancel to land); what is still alive
after that is killed. One summary line at the end.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import msgspec

from streamgate.common.broker_client import BrokerClient, BrokerError, BrokerUnavailable
from streamgate.common.config import Config
from streamgate.common.supervision import Backoff, ChildProcess, Liveness, stop_in_order
from streamgate.farm.scaling import desired_workers
from streamgate.farm.worker import DEFAULT_RUNNER, worker_process

log = logging.getLogger("streamgate.pool")

TICK_S = 0.1
STARTUP_TIMEOUT_S = 60


class WorkerHandle:
    def __init__(self, process: BaseProcess, conn: Connection, health_s: float) -> None:
        self.process = process
        self.conn = conn
        self.state = "starting"  # starting, connecting, idle, busy (as the worker reports it)
        self.started = time.monotonic()
        self.up_at: float | None = None  # its first message: imports done, runner loaded
        self.liveness = Liveness(health_s, self.started)
        self.retiring = False
        self.killed = False
        self.busy_since: float | None = None  # when its current job started (as it reported)

    def report(self, state: str, now: float) -> None:
        if state == "busy" and self.state != "busy":
            self.busy_since = now
        elif state != "busy":
            self.busy_since = None
        self.state = state

    def uptime(self, now: float) -> float:
        """How long it has been up; a worker that died before reporting was never up."""
        return 0.0 if self.up_at is None else now - self.up_at

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid


class Restart(msgspec.Struct, frozen=True):
    """One replacement of a dead worker, as the pool timed it (monotonic seconds)."""

    died_at: float
    delay_s: float
    started_at: float


class Pool:
    def __init__(self, config: Config, *, runner: str = DEFAULT_RUNNER, metrics: Any = None,
                 client: BrokerClient | None = None, tick_s: float = TICK_S,
                 startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        self.config = config
        self.runner = runner
        self.metrics = metrics
        self.client = client
        self.policy = config.transcoder.scaling_policy
        self.health_s = float(config.transcoder.health_check_interval)
        self.tick_s = tick_s
        self.startup_timeout_s = startup_timeout_s
        # One backoff for the pool: a crash loop (a bad runner, a broken install) hits every worker.
        self.backoff = Backoff.from_config(config.server)
        self._due: list[tuple[float, float, float]] = []  # restarts waiting: (due, died_at, delay)
        self.restarts: collections.deque[Restart] = collections.deque(maxlen=100)
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

    def headcount(self) -> int:
        """Live workers plus replacements waiting out their backoff (scaling must not bypass it)."""
        return len(self.live()) + len(self._due)

    # -- processes -----------------------------------------------------------------------------

    def start_worker(self) -> WorkerHandle:
        parent, child = self._mp.Pipe()
        process = self._mp.Process(
            target=worker_process, name="farm-worker", daemon=False,
            args=(self.config, child, self.runner, os.getpid(), None, self.metrics is not None),
        )
        process.start()
        child.close()
        handle = WorkerHandle(process, parent, self.health_s)
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

    def reap(self, now: float | None = None) -> None:
        """Collect exited workers; schedule a replacement, after the backoff, for those that did
        not leave on purpose."""
        now = time.monotonic() if now is None else now
        for handle in [w for w in self.workers if w.process.exitcode is not None]:
            self.workers.remove(handle)
            handle.conn.close()
            handle.process.join()
            if self.metrics is not None:
                from streamgate.common.metrics import mark_process_dead

                mark_process_dead(handle.pid)
            if handle.retiring or self.stopping:
                continue
            delay = self.backoff.next_delay(handle.uptime(now))
            log.warning("pool: worker pid %d exited with %s; replacing it in %.1fs", handle.pid,
                        handle.process.exitcode, delay)
            self._due.append((now + delay, now, delay))

    def restart_due(self, now: float) -> None:
        for entry in [e for e in self._due if e[0] <= now]:
            self._due.remove(entry)
            _, died_at, delay = entry
            self.replaced += 1
            self.start_worker()
            self.restarts.append(Restart(died_at=died_at, delay_s=delay, started_at=time.monotonic()))

    def read_pipes(self) -> None:
        for handle in self.workers:
            try:
                while handle.conn.poll():
                    kind, state = handle.conn.recv()
                    handle.report(state, time.monotonic())
                    if handle.up_at is None:
                        handle.up_at = time.monotonic()
                    if kind == "pong":
                        handle.liveness.answered()
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
                if now - handle.started > self.startup_timeout_s:
                    log.error("pool: worker pid %d did not start within %.0fs; killing it", handle.pid,
                              self.startup_timeout_s)
                    handle.killed = True
                    self._signal(handle, signal.SIGKILL)
                continue
            liveness = handle.liveness
            if liveness.ping_due(now):
                try:
                    handle.conn.send("ping")
                except (OSError, ValueError):
                    continue
                liveness.pinged(now)
            elif liveness.hung(now):
                log.error("pool: worker pid %d did not answer a ping for %.1fs; killing it",
                          handle.pid, liveness.silent_for(now))
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
        now = time.monotonic()
        long_after = float(self.policy.long_job_after)
        long_running = sum(1 for w in live if w.busy_since is not None and long_after > 0
                           and now - w.busy_since >= long_after)
        want = desired_workers(self.policy, queue_length=stats.queue_length, workers=self.headcount(),
                               busy=busy, long_running=long_running)
        self.converge(want, f"queue {stats.queue_length}")

    def converge(self, want: int, why: str) -> None:
        """Start workers up to ``want``, or retire idle ones down to it; busy workers are never retired."""
        live, count = self.live(), self.headcount()
        if want > count:
            log.info("pool: %s: scaling up %d -> %d workers", why, count, want)
            for _ in range(want - count):
                self.start_worker()
        elif want < count:
            # Fewer wanted: drop replacements still waiting out their backoff first.
            while self._due and want < count:
                self._due.pop()
                count -= 1
            idle = [w for w in live if w.state == "idle"]
            for handle in idle[: count - want]:
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
                self.reap(now)
                self.restart_due(now)
                self.check_health(now)
                if now >= next_scale:
                    next_scale = now + float(self.policy.check_interval)
                    await self.scale()
                if self.metrics is not None:
                    self.metrics.workers.set(len(self.live()))
                try:
                    await asyncio.wait_for(stop.wait(), self.tick_s)
                except TimeoutError:
                    pass
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Drain every worker (SIGTERM), then kill what outlives the drain."""
        self.stopping = True
        self._due.clear()
        transcoder = self.config.transcoder
        # Workers are peers: one stage, drained together; kill what outlives drain + abort grace.
        stage = [ChildProcess(f"pool: worker pid {w.pid}", w.process) for w in self.workers]
        killed = await stop_in_order(
            [stage], float(transcoder.drain_timeout) + float(transcoder.abort_grace) + 2)
        stopped = len(self.workers)
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
