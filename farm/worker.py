"""A farm worker process: takes one job at a time from the broker and runs the pipeline on it.

The ZeroMQ guide's Paranoid Pirate worker: a DEALER to the broker's backend, READY on connect,
HEARTBEAT every ``broker.heartbeat_interval`` both ways; a broker silent for interval x liveness
is presumed dead and the worker reconnects on a *fresh* socket after a doubling backoff. The
transcode runs in a thread so the event loop keeps heartbeating; progress (with the frame count
the broker's stall watchdog watches) is forwarded from that thread.

SIGTERM drains: the worker stops taking jobs, lets the running one finish within
``transcoder.drain_timeout``, else cancels it and hands it back (the broker requeues it at once).
An ABORT (cancel, task timeout, stall) cancels the run; a run that does not stop within
``abort_grace`` means a wedged pipeline, and the worker exits so its pool replaces it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import importlib.util
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from streamgate.common.config import Config
from streamgate.common.media import TranscodeProgress, TranscodeResult
from streamgate.common.protocol import (
    WORKER,
    Abort,
    Assign,
    BrokerMessage,
    Disconnect,
    Done,
    Drain,
    Failed,
    HandBack,
    Heartbeat,
    JobSpec,
    Progress,
    Ready,
    encode,
    reconnect_max_s,
)
from streamgate.farm.pipeline.limits import end_cpu_budget, set_memory_limit, start_cpu_budget

log = logging.getLogger("streamgate.worker")

# Exit code of a worker that killed itself because its pipeline would not stop (pool replaces it).
EXIT_WEDGED = 75
PROGRESS_EVERY_S = 0.2


@dataclass
class JobRun:
    """What a runner gets: the job, its attempt, the config, and the hooks of the worker."""

    job: JobSpec
    attempt: int
    config: Config
    on_progress: Callable[[TranscodeProgress], None]
    cancel: threading.Event


Runner = Callable[[JobRun], TranscodeResult]


class JobCancelled(Exception):
    """The run stopped because its cancel event was set."""


def run_pipeline(run: JobRun) -> TranscodeResult:
    """The default runner: the farm pipeline (farm/pipeline/transcode.py) on the job's source."""
    from streamgate.farm.pipeline.transcode import TranscodeSettings, transcode

    if run.config.storage.backend == "s3" and run.job.source_key:
        from streamgate.farm.publish import run_store_pipeline

        return run_store_pipeline(run)  # a fleet: the job names objects (farm/publish.py)
    settings = TranscodeSettings.from_config(run.config.transcoder, **run.job.settings)
    return transcode(Path(run.job.source), Path(run.job.out_dir), settings,
                     on_progress=run.on_progress, cancel=run.cancel)


def load_runner(spec: str) -> Runner:
    """``module:function`` or ``/path/to/file.py:function`` (tests inject faults this way)."""
    module_name, _, attr = spec.rpartition(":")
    if module_name.endswith(".py"):
        loaded = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
        assert loaded is not None and loaded.loader is not None
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    runner: Runner = getattr(module, attr)
    return runner


DEFAULT_RUNNER = f"{__name__}:run_pipeline"


@dataclass
class Current:
    """The run in progress."""

    job: JobSpec
    attempt: int
    cancel: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    future: asyncio.Future[TranscodeResult] | None = None
    aborted: str = ""  # the broker took the lease back: report nothing but READY when it stops
    handed_back: bool = False
    limit_hit: str = ""  # the run reached this process's CPU budget: a final failure with this reason


class Worker:
    def __init__(self, config: Config, *, endpoint: str | None = None, runner: Runner = run_pipeline,
                 worker_id: str | None = None, pool: Connection | None = None,
                 metrics: bool = False, cpu_budget_s: float = 0.0) -> None:
        self.config = config
        self.endpoint = endpoint or config.broker_endpoints.backend
        self.runner = runner
        self.worker_id = worker_id or f"{socket.gethostname()}/{os.getpid()}"
        self.pool = pool
        self.metrics = metrics
        self.heartbeat_s = float(config.broker.heartbeat_interval)
        self.expiry_s = self.heartbeat_s * config.broker.heartbeat_liveness
        self.reconnect_max_s = reconnect_max_s(self.heartbeat_s)
        self.drain_timeout_s = float(config.transcoder.drain_timeout)
        self.abort_grace_s = float(config.transcoder.abort_grace)
        # RLIMIT_CPU per job (farm/pipeline/limits.py); only a worker in a process of its own
        # sets it (worker_process), never one running inside another program.
        self.cpu_budget_s = cpu_budget_s
        self.draining = asyncio.Event()
        self.current: Current | None = None
        self.jobs_done = 0
        self.jobs_failed = 0
        self.sessions = 0  # connections made (1 + reconnects)
        self._ctx = zmq.asyncio.Context()
        self._decoder = msgspec.msgpack.Decoder(BrokerMessage)
        self._sock: zmq.asyncio.Socket | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="transcode")
        self._outbox: list[msgspec.Struct] = []  # finals: DONE / FAILED / HANDBACK, in order
        self._progress: Progress | None = None  # only the latest progress is worth sending
        self._wake = asyncio.Event()
        self._last_heard = 0.0
        self._unsure: msgspec.Struct | None = None  # last final sent, not yet known to have arrived
        self._tasks: set[asyncio.Task[Any]] = set()
        self._moved = asyncio.Event()  # the broker moved (a new leader): end the session now

    def retarget(self, endpoint: str) -> None:
        """Talk to the broker at ``endpoint`` from the next session on, starting one at once."""
        if endpoint != self.endpoint:
            log.info("worker %s: broker moved %s -> %s", self.worker_id, self.endpoint, endpoint)
            self.endpoint = endpoint
            self._moved.set()

    # -- life ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Sessions with the broker until drained (SIGTERM or :meth:`drain`)."""
        backoff = self.heartbeat_s
        drainer = asyncio.create_task(self._drain_when_asked(), name="worker-drain")
        try:
            while not self._finished():
                why = await self.session()
                if self._finished():
                    break
                if why == "lost":
                    log.warning("worker %s: broker silent for %.1fs; reconnecting in %.1fs",
                                self.worker_id, self.expiry_s, backoff)
                    await self._sleep_unless_drained(backoff)
                    backoff = min(backoff * 2, self.reconnect_max_s)
                else:
                    backoff = self.heartbeat_s
        finally:
            for task in (drainer, *self._tasks):
                task.cancel()
            await asyncio.gather(drainer, *self._tasks, return_exceptions=True)
            await self._stop_run()
            self._ctx.term()
            current = self.current
            wedged = current is not None and current.future is not None and not current.future.done()
            self._executor.shutdown(wait=not wedged, cancel_futures=True)
            log.info("worker %s stopped: %d done, %d failed", self.worker_id, self.jobs_done,
                     self.jobs_failed)

    def drain(self) -> None:
        self.draining.set()
        self._wake.set()

    def _finished(self) -> bool:
        return self.draining.is_set() and self.current is None and not self._outbox

    async def _sleep_unless_drained(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.draining.wait(), seconds)
        except TimeoutError:
            pass

    async def session(self) -> str:
        """One connection to the broker; returns "lost", "disconnect" or "drained"."""
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, self.worker_id.encode())
        self._moved.clear()
        sock.connect(self.endpoint)
        self._sock = sock
        self.sessions += 1
        self._last_heard = time.monotonic()
        try:
            await self._hello()
            if self._outbox:
                self._wake.set()  # results that waited for a broker go out now
            receiver = asyncio.create_task(self._receive(sock), name="worker-receive")
            sender = asyncio.create_task(self._send_loop(), name="worker-send")
            beater = asyncio.create_task(self._heartbeat(), name="worker-heartbeat")
            moved = asyncio.create_task(self._wait_moved(), name="worker-moved")
            done, pending = await asyncio.wait({receiver, sender, beater, moved},
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            return next(iter(done)).result()
        finally:
            if self._finished():
                await self._send(Disconnect(reason="worker stopping"))
            self._sock = None
            sock.close(linger=0)

    async def _wait_moved(self) -> str:
        await self._moved.wait()
        return "moved"  # run() reconnects at once, to the new endpoint

    async def _hello(self) -> None:
        hello = Ready(worker_id=self.worker_id, pid=os.getpid(), host=socket.gethostname())
        current, unsure = self.current, self._unsure
        if current is not None and not current.aborted:
            # Still running a job (the broker restarted, or we lost it): ask to keep the lease.
            hello = msgspec.structs.replace(hello, job_id=current.job.job_id, attempt=current.attempt)
            await self._send(hello)
        elif isinstance(unsure, Done | Failed | HandBack):
            # The broker may have died before reading our last result: claim the run, repeat it.
            await self._send(msgspec.structs.replace(hello, job_id=unsure.job_id, attempt=unsure.attempt))
            await self._send(unsure)
            self._unsure = None
        elif self._outbox and isinstance(final := self._outbox[0], Done | Failed | HandBack):
            # The run ended while no broker was reachable: claim it, the result follows at once
            # (a plain READY would leave a restarted broker waiting for the run's worker).
            await self._send(msgspec.structs.replace(hello, job_id=final.job_id, attempt=final.attempt))
        else:
            await self._send(hello)
        if self.draining.is_set():
            await self._send(Drain())

    async def _receive(self, sock: zmq.asyncio.Socket) -> str:
        while True:
            frames = await sock.recv_multipart()
            self._last_heard = time.monotonic()
            if len(frames) != 2 or frames[0] != WORKER:
                log.warning("worker: dropped a malformed broker message")
                continue
            try:
                message = self._decoder.decode(frames[1])
            except msgspec.DecodeError as exc:
                log.warning("worker: dropped an undecodable broker message: %s", exc)
                continue
            match message:
                case Heartbeat():
                    # Most likely the broker read what we sent before: a result is repeated on
                    # reconnect only when the broker went silent right after we sent it.
                    self._unsure = None
                case Assign():
                    await self.on_assign(message)
                case Abort():
                    await self.on_abort(message)
                case Disconnect():
                    log.info("worker %s: broker says %s", self.worker_id, message.reason)
                    return "disconnect"

    async def _heartbeat(self) -> str:
        while True:
            slept = time.monotonic()
            await asyncio.sleep(self.heartbeat_s)
            overslept = time.monotonic() - slept - self.heartbeat_s
            if overslept > self.heartbeat_s:
                # We were not scheduled: the broker's silence may be ours. Listen a while longer.
                self._last_heard += overslept
            if time.monotonic() - self._last_heard > self.expiry_s:
                return "lost"
            await self._send(Heartbeat())
            self._report_to_pool()

    async def _send_loop(self) -> str:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._progress is not None:
                progress, self._progress = self._progress, None
                await self._send(progress)
            while self._outbox:
                final = self._outbox.pop(0)
                self._unsure = final
                await self._send(final)
            if self._finished():
                return "drained"
            if self.draining.is_set() and self.current is None:
                return "drained"

    async def _send(self, message: msgspec.Struct) -> None:
        if self._sock is not None:
            await self._sock.send_multipart([WORKER, encode(message)])

    # -- jobs ----------------------------------------------------------------------------------

    async def on_assign(self, assign: Assign) -> None:
        if self.draining.is_set() or self.current is not None:
            # Raced with our DRAIN (or a broker that lost track): give it straight back.
            await self._send(HandBack(job_id=assign.job.job_id, attempt=assign.attempt,
                                      reason="worker draining" if self.draining.is_set() else "worker busy"))
            return
        current = Current(assign.job, assign.attempt)
        self.current = current
        loop = asyncio.get_running_loop()
        last = [0.0]

        def on_progress(p: TranscodeProgress) -> None:  # runs in the transcode thread
            now = time.monotonic()
            if now - last[0] < PROGRESS_EVERY_S and p.fraction < 1.0:
                return
            last[0] = now
            message = Progress(job_id=current.job.job_id, attempt=current.attempt,
                               frames=p.frames_done, fraction=p.fraction, fps=p.fps,
                               eta_s=p.eta_s, stage=p.stage)
            loop.call_soon_threadsafe(self._queue_progress, message)

        run = JobRun(job=assign.job, attempt=assign.attempt, config=self.config,
                     on_progress=on_progress, cancel=current.cancel)
        log.info("worker %s: job %s attempt %d", self.worker_id, assign.job.job_id, assign.attempt)
        if self.cpu_budget_s > 0:
            start_cpu_budget(self.cpu_budget_s)
        current.future = loop.run_in_executor(self._executor, self.runner, run)
        current.future.add_done_callback(lambda f: self._finish(current, f))
        self._report_to_pool()

    def _queue_progress(self, message: Progress) -> None:
        current = self.current
        if current is not None and not current.aborted and current.attempt == message.attempt:
            self._progress = message
            self._wake.set()

    def _finish(self, current: Current, future: asyncio.Future[TranscodeResult]) -> None:
        """The runner returned or raised: report the outcome (unless the lease was taken back)."""
        if self.current is current:
            self.current = None
        if self.cpu_budget_s > 0:
            end_cpu_budget()
        self._progress = None
        elapsed = time.monotonic() - current.started
        job_id, attempt = current.job.job_id, current.attempt
        if current.aborted or current.handed_back:
            if current.aborted:
                self._outbox.append(Ready(worker_id=self.worker_id, pid=os.getpid(),
                                          host=socket.gethostname()))
        elif future.cancelled():
            self._outbox.append(HandBack(job_id=job_id, attempt=attempt, reason="worker stopping"))
        elif (exc := future.exception()) is not None:
            self.jobs_failed += 1
            reason = current.limit_hit or getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
            retryable = not current.limit_hit and bool(getattr(exc, "retryable", True))
            log.warning("worker %s: job %s attempt %d failed: %s", self.worker_id, job_id, attempt, reason)
            self._outbox.append(Failed(job_id=job_id, attempt=attempt, reason=str(reason),
                                       retryable=retryable))
        else:
            self.jobs_done += 1
            result = future.result()
            if self.metrics:
                _observe(result, elapsed)
            self._outbox.append(Done(job_id=job_id, attempt=attempt, result=result, elapsed_s=elapsed))
        self._wake.set()
        self._report_to_pool()

    async def on_abort(self, abort: Abort) -> None:
        current = self.current
        if current is None or current.job.job_id != abort.job_id or current.attempt != abort.attempt:
            # Nothing of ours to stop (it ended already): we are free.
            if current is None:
                await self._send(Ready(worker_id=self.worker_id, pid=os.getpid(), host=socket.gethostname()))
            return
        log.warning("worker %s: job %s attempt %d aborted: %s", self.worker_id, abort.job_id,
                    abort.attempt, abort.reason)
        current.aborted = abort.reason
        current.cancel.set()
        self._spawn(self._wedge_guard(current))

    def on_cpu_limit(self) -> None:
        """SIGXCPU: the running job spent this process's CPU budget; stop it, fail it for good."""
        end_cpu_budget()  # no more signals; a run deaf to its cancel meets the wedge guard
        current = self.current
        if current is None or current.limit_hit:
            return
        current.limit_hit = (f"CPU time limit of {self.cpu_budget_s:g} s per job reached "
                             "(transcoder.cpu_time_limit_per_job)")
        log.warning("worker %s: job %s: %s", self.worker_id, current.job.job_id, current.limit_hit)
        current.cancel.set()
        self._spawn(self._wedge_guard(current))

    async def _wedge_guard(self, current: Current) -> None:
        """A run that ignores its cancel for abort_grace is wedged: die, the pool replaces us."""
        assert current.future is not None
        try:
            await asyncio.wait_for(asyncio.shield(current.future), self.abort_grace_s)
        except TimeoutError:
            log.error("worker %s: job %s did not stop within %.1fs of its abort; exiting",
                      self.worker_id, current.job.job_id, self.abort_grace_s)
            os._exit(EXIT_WEDGED)  # no clean-up can run past a wedged thread; the OS reaps
        except Exception:
            pass

    async def _drain_when_asked(self) -> None:
        """SIGTERM: no new jobs; finish within drain_timeout, else cancel and hand back."""
        await self.draining.wait()
        await self._send(Drain())
        current = self.current
        if current is None or current.future is None:
            self._wake.set()
            return
        log.info("worker %s: draining; job %s has %.1fs to finish", self.worker_id,
                 current.job.job_id, self.drain_timeout_s)
        try:
            await asyncio.wait_for(asyncio.shield(current.future), self.drain_timeout_s)
            return
        except TimeoutError:
            pass
        except Exception:
            return
        if current.aborted or self.current is not current:
            return
        current.handed_back = True
        current.cancel.set()
        self._outbox.append(HandBack(job_id=current.job.job_id, attempt=current.attempt,
                                     reason="worker draining"))
        self._wake.set()
        # Let the cancelled pipeline clean up (its shared memory, temp files) before we exit.
        try:
            await asyncio.wait_for(asyncio.shield(current.future), self.abort_grace_s)
        except (TimeoutError, Exception):
            pass
        if self.current is current:
            self.current = None
        self._wake.set()

    async def _stop_run(self) -> None:
        current = self.current
        if current is not None and current.future is not None:
            current.cancel.set()
            try:
                await asyncio.wait_for(asyncio.shield(current.future), self.abort_grace_s)
            except (TimeoutError, Exception):
                pass

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the pool's view -----------------------------------------------------------------------

    def _report_to_pool(self) -> None:
        if self.pool is not None:
            try:
                self.pool.send(("state", "busy" if self.current is not None else "idle"))
            except (OSError, ValueError):
                pass

    def on_pool_message(self) -> None:
        """The pool pings over the pipe; a loop that cannot answer is hung (uvicorn's shape)."""
        assert self.pool is not None
        try:
            while self.pool.poll():
                message = self.pool.recv()
                if message == "ping":
                    self.pool.send(("pong", "busy" if self.current is not None else "idle"))
        except (EOFError, OSError):
            self.drain()  # the pool is gone


def _observe(result: TranscodeResult, elapsed_s: float) -> None:
    from streamgate.farm.metrics import observe_result

    observe_result(result, elapsed_s)


def _own_resource_tracker() -> None:
    """Use a resource tracker of our own, not the pool's that ``spawn`` handed down.

    The pipeline's frame ring is a shared-memory segment that stays named for a moment (until
    every encoder has mapped it). Should this worker be killed in that moment, the tracker
    unlinks the segment when the last process using it exits; with the pool's tracker that would
    be when the pool exits, so /dev/shm would keep the segment for the pool's whole life. A
    tracker of our own sees us (and our encoders, which die with us) go at once. CPython keeps
    the inherited descriptor in ``_resource_tracker._fd`` (multiprocessing/spawn.py); dropping it
    makes the next registration start a fresh tracker.
    """
    from multiprocessing import resource_tracker

    tracker: Any = resource_tracker._resource_tracker
    if getattr(tracker, "_fd", None) is not None:
        os.close(tracker._fd)
        tracker._fd = None
        tracker._pid = None


def worker_process(config: Config, conn: Connection | None, runner_spec: str, parent_pid: int | None,
                   worker_id: str | None = None, metrics: bool = False) -> None:
    """Entry point of a worker process (multiprocessing ``spawn``, not daemonic: the pipeline
    starts encoder processes of its own)."""
    from streamgate.common import loops
    from streamgate.common.process import die_with_parent, set_title
    from streamgate.common.service import configure_logging

    set_title("farm-worker")
    if parent_pid is not None:
        die_with_parent(signal.SIGTERM, parent_pid)
    _own_resource_tracker()
    # Ctrl-C in a terminal reaches the whole process group: the pool decides, not each worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(logging.INFO)

    # Import the pipeline (PyAV, numpy, lxml) now, not in the first job's thread: an import holds
    # the GIL, and a loop that cannot run misses heartbeats and loses its lease.
    # (The package alone imports none of them: the first job's thread paid ~0.3 s idle, over a
    # second on a loaded machine, before its first frame.)
    from streamgate.farm.pipeline import encoder_pool
    from streamgate.farm.pipeline import transcode as _transcode  # noqa: F401

    # Encoder processes started now and reused across jobs: a short clip's job then pays no
    # interpreter start or imports per rung (farm/pipeline/encoder_pool.py). From this thread,
    # which lives as long as the worker (their parent-death signal follows it).
    encoder_pool.enable(min(len(set(config.transcoder.ladder)), 8))

    runner = load_runner(runner_spec)
    # One upload must not take the host: this process and the encoders it starts (each sets its
    # own) stay under the configured address space; CPU is budgeted per job (Worker).
    set_memory_limit(int(config.transcoder.worker_memory_limit))
    cpu_budget_s = float(config.transcoder.cpu_time_limit_per_job)

    if config.storage.backend == "s3":
        from streamgate.farm.publish import sweep_scratch

        sweep_scratch(config)  # a worker killed mid-job (SIGKILL) left its scratch behind

    async def main() -> None:
        from streamgate.farm.failover import failover_enabled

        if failover_enabled(config):
            await _run_following(config, conn, runner, worker_id, metrics)
            return
        worker = Worker(config, runner=runner, pool=conn, worker_id=worker_id,
                        metrics=metrics, cpu_budget_s=cpu_budget_s)
        await _serve(worker, conn)

    async def _serve(worker: Worker, conn: Connection | None) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, worker.drain)
        loop.add_signal_handler(signal.SIGXCPU, worker.on_cpu_limit)
        if conn is not None:
            loop.add_reader(conn.fileno(), worker.on_pool_message)
            conn.send(("state", "connecting"))  # up: from now on the pool pings us
        try:
            await worker.run()
        finally:
            if conn is not None:
                loop.remove_reader(conn.fileno())

    async def _run_following(config: Config, conn: Connection | None, runner: Runner,
                             worker_id: str | None, metrics: bool) -> None:
        # A fleet: the broker is the leader of the moment (farm/leader.py).
        from streamgate.common.consul.discovery import Discovery
        from streamgate.farm.failover import discovered_worker
        from streamgate.farm.leader import follow_leader

        async with Discovery(config) as discovery:
            worker = discovered_worker(config, discovery, runner=runner, pool=conn, worker_id=worker_id,
                                       metrics=metrics, cpu_budget_s=cpu_budget_s)
            follower = asyncio.create_task(follow_leader(discovery, lambda e: worker.retarget(e.backend)),
                                           name="worker-follow-leader")
            try:
                await _serve(worker, conn)
            finally:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)

    loops.run(main())
    encoder_pool.close()
    if any(t.name.startswith("transcode") and t.is_alive() for t in threading.enumerate()):
        # A wedged pipeline thread would block interpreter exit (executor threads are joined).
        logging.shutdown()
        os._exit(EXIT_WEDGED)
