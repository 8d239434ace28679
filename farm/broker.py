"""The farm broker: a priority queue of transcode jobs between clients and workers.

Three ZeroMQ sockets (see ``common/protocol.py``): a ROUTER for workers (``backend``), a ROUTER for
clients (``frontend``) and a PUB for job events. The shape is the ZeroMQ guide's Paranoid Pirate
queue with Majordomo's worker bookkeeping: heartbeats both ways, ``purge_workers`` on every loop
turn, ``dispatch`` whenever a job or a worker becomes available.

A dispatched job holds a *lease* ``(job_id, attempt)`` on one worker. The lease is lost when the
worker misses heartbeats (interval x liveness), when the run exceeds ``transcoder.task_timeout``,
or when its frame count stops advancing for ``broker.stall_timeout`` (the worker is told to abort
and, if it cannot, kills itself; its pool replaces it). A lost lease requeues the job; after
``broker.max_retries`` failed runs the job is dead-lettered (state ``failed``) with the reason.
Every state change is written to the journal before it is acknowledged or acted on.

A full disk (the journal's write fails with ENOSPC) is no crash: a submit it cannot journal is
refused with the reason (the edge keeps the video queued and resubmits), and a change to a job
already accepted is kept in memory and written as soon as there is room again (``flush_journal``).
Until then a kill of the broker replays that job's last journaled state: it runs again, never
lost (issue 14).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import heapq
import logging
import time
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from streamgate.common.config import BrokerEndpoints, Config
from streamgate.common.protocol import (
    CLIENT,
    WORKER,
    Abort,
    Assign,
    Cancel,
    CancelReply,
    ClientRequest,
    Disconnect,
    Done,
    Drain,
    ErrorReply,
    Event,
    Failed,
    FarmStats,
    GetStats,
    HandBack,
    Heartbeat,
    JobCancelled,
    JobDone,
    JobFailed,
    JobInfo,
    JobProgress,
    JobQueued,
    JobReply,
    JobSpec,
    JobStarted,
    Progress,
    Query,
    Ready,
    StatsReply,
    Submit,
    SubmitReply,
    Tick,
    WorkerMessage,
    encode,
    reconnect_max_s,
    topic,
)
from streamgate.farm.journal import JobRecord, Journal, Totals
from streamgate.farm.queue import JobQueue

log = logging.getLogger("streamgate.broker")

RETRY_BACKOFF_MAX_S = 60.0  # longest wait before a failed job runs again


# Submits read from the socket in one turn and journaled in one commit, at most.
GROUP_COMMIT_MAX = 256

NO_ROOM = "no space left on device: the broker's journal cannot record the job; retry when the disk has room"
JOURNAL_RETRY_S = 1.0  # how often changes kept in memory on a full disk are tried again


def _no_room(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class WorkerState:
    """What the broker knows of one connected worker (keyed by its ROUTER identity)."""

    def __init__(self, identity: bytes, ready: Ready, expiry: float) -> None:
        self.identity = identity
        self.worker_id = ready.worker_id
        self.pid = ready.pid
        self.expiry = expiry
        self.last_seen = time.monotonic()
        self.lease: Lease | None = None
        self.available = False  # idle and willing: in the broker's idle list
        self.draining = False


class Lease:
    """A running job: who runs it, since when, and how far its frame count has come."""

    def __init__(self, job_id: str, attempt: int, worker: WorkerState | None, deadline: float) -> None:
        now = time.monotonic()
        self.job_id = job_id
        self.attempt = attempt
        self.worker = worker  # None: journaled as running, awaiting its worker after a restart
        self.started = now
        self.deadline = deadline
        self.frames = -1
        self.stage = ""
        self.frames_at = now
        self.fraction = 0.0
        self.fps = 0.0
        self.eta_s: float | None = None


class Broker:
    def __init__(self, config: Config, journal: Journal, *,
                 endpoints: BrokerEndpoints | None = None, metrics: Any = None) -> None:
        self.config = config
        self.journal = journal
        self.endpoints = endpoints or config.broker_endpoints
        self.metrics = metrics
        broker = config.broker
        self.heartbeat_s = float(broker.heartbeat_interval)
        self.expiry_s = self.heartbeat_s * broker.heartbeat_liveness
        self.max_retries = broker.max_retries
        self.retry_backoff_s = float(broker.retry_backoff)
        # Failed jobs waiting out their retry backoff: (due, job_id), a heap. A store that is down
        # (farm/publish.py) fails every attempt at once; retrying at once would burn them all.
        self._delayed: list[tuple[float, str]] = []
        self.stall_s = float(broker.stall_timeout)
        self.retention_s = float(broker.journal_retention)
        self._next_prune = 0.0
        self.task_timeout_s = float(config.transcoder.task_timeout)
        self.max_queue = config.transcoder.max_queue_size
        self.max_running = config.transcoder.max_concurrent_tasks
        self.queue = JobQueue()
        self.jobs: dict[str, JobRecord] = {}  # not terminal; terminal ones are read from the journal
        # Changes the journal could not take (disk full), newest per job, written when it can.
        self._unsaved: dict[str, JobRecord] = {}
        self._next_flush = 0.0
        self.leases: dict[str, Lease] = {}
        self.workers: dict[bytes, WorkerState] = {}
        self.idle: collections.OrderedDict[bytes, None] = collections.OrderedDict()  # LRU first
        self.totals = Totals()
        self._ctx = zmq.asyncio.Context()
        self._worker_decoder = msgspec.msgpack.Decoder(WorkerMessage)
        self._client_decoder = msgspec.msgpack.Decoder(ClientRequest)
        self.backend: zmq.asyncio.Socket | None = None
        self.frontend: zmq.asyncio.Socket | None = None
        self.publisher: zmq.asyncio.Socket | None = None

    # -- life ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover the journal, then bind the sockets."""
        self.totals = await self.journal.totals()
        # Its worker notices we were gone (one expiry), then reconnects within its backoff cap;
        # the margin covers a slow start of either side.
        deadline = time.monotonic() + 2 * (self.expiry_s + reconnect_max_s(self.heartbeat_s))
        for record in await self.journal.load_active():
            self.jobs[record.job_id] = record
            if record.state == "running":
                # Its worker may still run it: wait one expiry for the worker to re-announce it
                # (READY with job_id) before running it again elsewhere (exactly once).
                self.leases[record.job_id] = Lease(record.job_id, record.attempts, None, deadline)
            else:
                self.queue.push(record.job_id, record.spec.priority)
        for endpoint in (self.endpoints.backend, self.endpoints.frontend, self.endpoints.publisher):
            _prepare_ipc(endpoint)
        self.backend = self._socket(zmq.ROUTER, self.endpoints.backend)
        self.frontend = self._socket(zmq.ROUTER, self.endpoints.frontend)
        self.publisher = self._socket(zmq.PUB, self.endpoints.publisher)
        self._observe_queue()
        log.info("broker: %d queued, %d running recovered from the journal; %d done, %d failed so far",
                 len(self.queue), len(self.leases), self.totals.done, self.totals.failed)

    def _socket(self, kind: int, endpoint: str) -> zmq.asyncio.Socket:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if kind == zmq.ROUTER:
            # A reconnecting peer keeps its identity: take over the old pipe (ZMQ_ROUTER_HANDOVER).
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.bind(endpoint)
        return sock

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set."""
        loop = asyncio.create_task(self._loop(), name="broker-loop")
        stopper = asyncio.create_task(stop.wait(), name="broker-stop")
        try:
            done, _ = await asyncio.wait({loop, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if loop in done:
                loop.result()  # a failed loop is an error of the broker, not a quiet stop
        finally:
            for task in (loop, stopper):
                task.cancel()
            await asyncio.gather(loop, stopper, return_exceptions=True)

    async def close(self) -> None:
        for sock in (self.backend, self.frontend, self.publisher):
            if sock is not None:
                sock.close(linger=0)
        self._ctx.term()
        await self.journal.close()
        log.info("broker stopped: %d queued, %d running, %d done, %d failed",
                 len(self.queue), len(self.leases), self.totals.done, self.totals.failed)

    # -- the loop ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        """The guide's broker loop: poll both ROUTERs, handle everything that arrived, then purge
        expired workers, check leases and send heartbeats. Reading first matters: after a pause
        of this process, heartbeats waiting in the socket must count before anyone is purged."""
        assert self.backend is not None and self.frontend is not None
        poller = zmq.asyncio.Poller()
        poller.register(self.backend, zmq.POLLIN)
        poller.register(self.frontend, zmq.POLLIN)
        turn_s = min(self.heartbeat_s / 4, 0.25)
        next_beat = 0.0
        last_turn = time.monotonic()
        while True:
            ready = dict(await poller.poll(turn_s * 1000))
            if self.backend in ready:
                await self._read_workers()
            if self.frontend in ready:
                await self._read_clients()
            now = time.monotonic()
            if now - last_turn > self.expiry_s / 2:
                # This process was not scheduled (a paused VM, a starved CPU): the silence was
                # ours, not the workers'. Do not hold it against them.
                for worker in self.workers.values():
                    worker.expiry += now - last_turn
            last_turn = now
            await self.purge_workers(now)
            await self.check_leases(now)
            await self.flush_journal(now)
            await self.prune_journal(now)
            if now >= next_beat:
                next_beat = now + self.heartbeat_s
                await self.send_heartbeats()
                self.publish(Tick(queue_length=len(self.queue), at=time.time()))

    async def _read_workers(self) -> None:
        assert self.backend is not None
        while True:
            try:
                frames = await self.backend.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 3 or frames[1] != WORKER:
                log.warning("broker: dropped a malformed worker message (%d frames)", len(frames))
                continue
            try:
                message = self._worker_decoder.decode(frames[2])
            except msgspec.DecodeError as exc:
                log.warning("broker: dropped an undecodable worker message: %s", exc)
                continue
            await self.on_worker_message(frames[0], message)

    async def _read_clients(self) -> None:
        """Every request waiting in the socket at once: consecutive submits among them share one
        journal commit (group commit), each acknowledged only after that commit returns."""
        assert self.frontend is not None
        while True:
            batch: list[tuple[bytes, ClientRequest | None, str]] = []
            while len(batch) < GROUP_COMMIT_MAX:
                try:
                    frames = await self.frontend.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(frames) != 3 or frames[1] != CLIENT:
                    log.warning("broker: dropped a malformed client message (%d frames)", len(frames))
                    continue
                try:
                    batch.append((frames[0], self._client_decoder.decode(frames[2]), ""))
                except msgspec.DecodeError as exc:
                    batch.append((frames[0], None, str(exc)))
            if not batch:
                return
            i = 0
            while i < len(batch):
                j = i
                while j < len(batch) and isinstance(batch[j][1], Submit):
                    j += 1
                if j > i:
                    submits = [request for _, request, _ in batch[i:j]]
                    replies: list[msgspec.Struct] = list(await self.submit_many(submits))  # type: ignore[arg-type]
                else:
                    identity, request, error = batch[i]
                    j = i + 1
                    replies = [ErrorReply(request_id=-1, reason=f"bad request: {error}") if request is None
                               else await self.on_client_request(request)]
                for (identity, _, _), reply in zip(batch[i:j], replies, strict=True):
                    await self.frontend.send_multipart([identity, CLIENT, encode(reply)])
                i = j

    # -- workers -------------------------------------------------------------------------------

    async def on_worker_message(self, identity: bytes, message: WorkerMessage) -> None:
        worker = self.workers.get(identity)
        if worker is None and not isinstance(message, Ready | Disconnect):
            # Majordomo: a worker we do not know (we restarted, or purged it) must reconnect.
            await self.send_worker(identity, Disconnect(reason="unknown worker: reconnect"))
            return
        if worker is not None:
            worker.expiry = time.monotonic() + self.expiry_s
            worker.last_seen = time.monotonic()
        match message:
            case Ready():
                await self.on_ready(identity, message)
            case Heartbeat():
                pass
            case Progress():
                self.on_progress(worker, message)
            case Done():
                await self.on_done(worker, message)
            case Failed():
                await self.on_failed(worker, message)
            case HandBack():
                await self.on_handback(worker, message)
            case Drain():
                assert worker is not None
                worker.draining = True
                self.idle.pop(identity, None)
            case Disconnect():
                if worker is not None:
                    await self.remove_worker(worker, "worker disconnected")
        await self.dispatch()

    async def on_ready(self, identity: bytes, ready: Ready) -> None:
        # The same worker (by id) on a new pipe, or a worker that restarted: forget the old state;
        # its run is re-adopted below when READY names it, and lost otherwise.
        for old in [w for i, w in self.workers.items() if i == identity or w.worker_id == ready.worker_id]:
            self.workers.pop(old.identity, None)
            self.idle.pop(old.identity, None)
            if old.lease is not None and old.lease.job_id != ready.job_id:
                await self.lose_lease(old.lease, "worker restarted", failure=True)
        worker = WorkerState(identity, ready, time.monotonic() + self.expiry_s)
        self.workers[identity] = worker
        if ready.job_id is not None:
            lease = self.leases.get(ready.job_id)
            if lease is not None and lease.attempt == ready.attempt and (
                lease.worker is None or lease.worker.worker_id == ready.worker_id
            ):
                # Re-adopted after a broker restart or a reconnect: the run continues, once.
                lease.worker = worker
                lease.deadline = lease.started + self.task_timeout_s
                lease.frames_at = time.monotonic()  # alive, by its own word: the stall clock restarts
                worker.lease = lease
                self.jobs[lease.job_id].worker = worker.worker_id
                log.info("broker: %s re-adopted job %s attempt %d", worker.worker_id, ready.job_id,
                         ready.attempt)
                return
            record = self.jobs.get(ready.job_id)
            if (lease is None and record is not None and record.state == "queued"
                    and record.attempts == ready.attempt and self.queue.remove(ready.job_id)):
                # Requeued while its worker was away (broker restart, lost heartbeats), and nobody
                # has started it since: the run that is still going keeps it.
                lease = Lease(ready.job_id, ready.attempt, worker, time.monotonic() + self.task_timeout_s)
                self.leases[ready.job_id] = lease
                worker.lease = lease
                record.state, record.worker = "running", worker.worker_id
                await self.save(record)
                self._observe_queue()
                log.info("broker: %s took back job %s attempt %d", worker.worker_id, ready.job_id,
                         ready.attempt)
                return
            await self.send_worker(identity, Abort(job_id=ready.job_id, attempt=ready.attempt,
                                                   reason="lease lost"))
            return  # busy until it stops that run and says READY again
        worker.available = True
        self.idle[identity] = None

    def _lease_of(self, worker: WorkerState | None, job_id: str, attempt: int) -> Lease | None:
        lease = self.leases.get(job_id)
        if lease is None or worker is None or lease.attempt != attempt:
            return None
        if lease.worker is None:
            # Journaled as running before a restart, and this worker reports on exactly that run
            # (a result it finished while we were down): it is the run's worker.
            lease.worker = worker
            self.jobs[job_id].worker = worker.worker_id
            return lease
        return lease if lease.worker is worker else None

    def on_progress(self, worker: WorkerState | None, message: Progress) -> None:
        lease = self._lease_of(worker, message.job_id, message.attempt)
        if lease is None:
            return
        # Advancing: more frames, or a later stage (packaging and the gate count no frames).
        if message.frames > lease.frames or message.stage != lease.stage or message.fraction > lease.fraction:
            lease.frames, lease.stage = max(lease.frames, message.frames), message.stage
            lease.frames_at = time.monotonic()
        lease.fraction, lease.fps, lease.eta_s = message.fraction, message.fps, message.eta_s
        self.publish(JobProgress(job_id=message.job_id, attempt=message.attempt,
                                 fraction=message.fraction, fps=message.fps, eta_s=message.eta_s,
                                 frames=message.frames, stage=message.stage))

    async def on_done(self, worker: WorkerState | None, message: Done) -> None:
        assert worker is not None
        lease = self._lease_of(worker, message.job_id, message.attempt)
        self._release(worker)
        record = self.jobs.get(message.job_id)
        if record is None:
            return  # already terminal (done, cancelled, dead-lettered): exactly once
        if lease is None:
            if message.job_id in self.leases:
                return  # a stale run finished while a newer one holds the lease: that one decides
            # Finished after losing its lease, before anyone else started it: keep the work.
            self.queue.remove(message.job_id)
        else:
            del self.leases[message.job_id]
        record.state, record.result, record.reason = "done", message.result, ""
        record.elapsed_s = message.elapsed_s
        await self.save(record)
        del self.jobs[message.job_id]
        self.totals.done += 1
        self.totals.done_seconds += message.elapsed_s
        self._count("done")
        self.publish(JobDone(job_id=record.job_id, attempts=record.attempts, result=message.result,
                             elapsed_s=message.elapsed_s))
        self._observe_queue()

    async def on_failed(self, worker: WorkerState | None, message: Failed) -> None:
        assert worker is not None
        lease = self._lease_of(worker, message.job_id, message.attempt)
        self._release(worker)
        if lease is not None:
            await self.lose_lease(lease, message.reason, failure=True, final=not message.retryable)

    async def on_handback(self, worker: WorkerState | None, message: HandBack) -> None:
        assert worker is not None
        lease = self._lease_of(worker, message.job_id, message.attempt)
        self._release(worker)
        if lease is not None:
            await self.lose_lease(lease, message.reason, failure=False)

    def _release(self, worker: WorkerState) -> None:
        """The worker's run ended (its reply implies READY, as in Paranoid Pirate)."""
        worker.lease = None
        if not worker.draining:
            worker.available = True
            self.idle[worker.identity] = None

    async def remove_worker(self, worker: WorkerState, why: str) -> None:
        self.workers.pop(worker.identity, None)
        self.idle.pop(worker.identity, None)
        if worker.lease is not None:
            await self.lose_lease(worker.lease, why, failure=True)

    async def purge_workers(self, now: float) -> None:
        for worker in [w for w in self.workers.values() if w.expiry < now]:
            log.warning("broker: worker %s missed heartbeats for %.1fs; purged", worker.worker_id,
                        self.expiry_s)
            await self.remove_worker(worker, f"worker lost: no heartbeat for {self.expiry_s:g}s")
        await self.dispatch()

    async def check_leases(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, job_id = heapq.heappop(self._delayed)
            record = self.jobs.get(job_id)
            if record is not None and record.state == "queued" and job_id not in self.leases:
                self.queue.push(job_id, record.spec.priority)
        for lease in list(self.leases.values()):
            if lease.worker is None:
                if now > lease.deadline:  # nobody re-adopted it after a restart: run it again
                    await self.lose_lease(lease, "broker restarted", failure=False)
            elif now > lease.deadline:
                await self.abort(lease, f"task timeout: ran over {self.task_timeout_s:g}s")
            elif now - lease.frames_at > self.stall_s:
                await self.abort(lease, f"stalled: no frame for {self.stall_s:g}s")
        await self.dispatch()

    async def abort(self, lease: Lease, reason: str) -> None:
        """Take the lease back from a worker that still runs it; the worker stops (or dies)."""
        worker = lease.worker
        assert worker is not None
        log.warning("broker: job %s attempt %d on %s: %s", lease.job_id, lease.attempt,
                    worker.worker_id, reason)
        await self.send_worker(worker.identity, Abort(job_id=lease.job_id, attempt=lease.attempt,
                                                      reason=reason))
        worker.lease = None  # busy until it says READY again
        await self.lose_lease(lease, reason, failure=True)

    async def lose_lease(self, lease: Lease, reason: str, *, failure: bool, final: bool = False) -> None:
        """The run ended without a result: requeue the job, or dead-letter it after the limit."""
        self.leases.pop(lease.job_id, None)
        if lease.worker is not None and lease.worker.lease is lease:
            lease.worker.lease = None
        record = self.jobs.get(lease.job_id)
        if record is None:
            return
        record.worker = ""
        if failure:
            record.failures += 1
            record.reason = reason
        if failure and (final or record.failures > self.max_retries):
            record.state = "failed"
            record.reason = (f"{reason} (after {record.failures} failed attempts)"
                             if record.failures > 1 else reason)
            await self.save(record)
            del self.jobs[record.job_id]
            self.totals.failed += 1
            self._count("failed")
            log.warning("broker: job %s dead-lettered: %s", record.job_id, record.reason)
            self.publish(JobFailed(job_id=record.job_id, attempt=lease.attempt, reason=record.reason,
                                   final=True))
        else:
            record.state = "queued"
            await self.save(record)
            if failure and self.retry_backoff_s > 0:
                # Doubling per failure, capped: the broker's loop queues it when it is due.
                delay = min(self.retry_backoff_s * 2 ** (record.failures - 1), RETRY_BACKOFF_MAX_S)
                heapq.heappush(self._delayed, (time.monotonic() + delay, record.job_id))
            else:
                # A handed-back job goes to the front of its priority: it was already next once.
                self.queue.push(record.job_id, record.spec.priority, front=not failure)
            if failure:
                self._count("retried")
                self.publish(JobFailed(job_id=record.job_id, attempt=lease.attempt, reason=reason,
                                       final=False))
            self.publish(JobQueued(job_id=record.job_id, priority=record.spec.priority,
                                   attempt=record.attempts))
        self._observe_queue()

    async def save(self, record: JobRecord) -> None:
        """Journal a change of an accepted job; on a full disk keep it for ``flush_journal``."""
        try:
            await self.journal.save(record)
        except OSError as exc:
            if not _no_room(exc):
                raise
            if not self._unsaved:
                log.warning("broker: journal write failed (%s); changes kept in memory until the disk has room", exc)
            self._unsaved[record.job_id] = record
            return
        self._unsaved.pop(record.job_id, None)

    async def flush_journal(self, now: float) -> None:
        """Write the changes a full disk held back, all in one commit, once there is room."""
        if not self._unsaved or now < self._next_flush:
            return
        try:
            await self.journal.save_many(list(self._unsaved.values()))
        except OSError as exc:
            if not _no_room(exc):
                raise
            self._next_flush = now + JOURNAL_RETRY_S
            return
        log.info("broker: the journal takes writes again: %d held-back changes written", len(self._unsaved))
        self._unsaved.clear()

    def _known(self, job_id: str) -> JobRecord | None:
        """A job's record not yet in the journal's latest state: live, or held back by a full disk."""
        return self.jobs.get(job_id) or self._unsaved.get(job_id)

    async def prune_journal(self, now: float) -> None:
        """Drop finished jobs past ``broker.journal_retention``, a batch a turn so the loop never
        stalls on it; after a short batch, wait a while before looking again."""
        if self.retention_s <= 0 or now < self._next_prune:
            return
        batch = 1000
        try:
            dropped = await self.journal.prune(time.time() - self.retention_s, limit=batch)
        except OSError as exc:
            if not _no_room(exc):
                raise
            self._next_prune = now + min(60.0, self.retention_s / 10)
            return
        self._next_prune = now if dropped >= batch else now + min(60.0, self.retention_s / 10)
        if dropped:
            log.info("broker: pruned %d finished jobs older than %gs from the journal", dropped, self.retention_s)

    async def send_heartbeats(self) -> None:
        for identity in list(self.workers):
            await self.send_worker(identity, Heartbeat())

    async def send_worker(self, identity: bytes, message: msgspec.Struct) -> None:
        assert self.backend is not None
        await self.backend.send_multipart([identity, WORKER, encode(message)])

    async def dispatch(self) -> None:
        """Give queued jobs to idle workers, highest priority first, longest-idle worker first."""
        while self.idle and len(self.queue) and len(self.leases) < self.max_running:
            job_id = self.queue.pop()
            if job_id is None:
                break
            identity, _ = self.idle.popitem(last=False)
            worker = self.workers[identity]
            worker.available = False
            record = self.jobs[job_id]
            record.attempts += 1
            record.state, record.worker = "running", worker.worker_id
            lease = Lease(job_id, record.attempts, worker, time.monotonic() + self.task_timeout_s)
            self.leases[job_id] = lease
            worker.lease = lease
            await self.save(record)
            await self.send_worker(identity, Assign(job=record.spec, attempt=record.attempts))
            self.publish(JobStarted(job_id=job_id, attempt=record.attempts, worker=worker.worker_id))
            self._observe_queue()

    # -- clients -------------------------------------------------------------------------------

    async def on_client_request(self, request: ClientRequest) -> msgspec.Struct:
        match request:
            case Submit():
                return await self.submit(request.request_id, request.job)
            case Cancel():
                cancelled, state = await self.cancel(request.job_id)
                return CancelReply(request_id=request.request_id, cancelled=cancelled, state=state)
            case Query():
                return JobReply(request_id=request.request_id, info=await self.job_info(request.job_id))
            case GetStats():
                return StatsReply(request_id=request.request_id, stats=self.stats())
        raise AssertionError(f"unhandled request {request!r}")  # the union is exhaustive

    async def submit(self, request_id: int, spec: JobSpec) -> SubmitReply:
        (reply,) = await self.submit_many([Submit(request_id=request_id, job=spec)])
        return reply

    async def submit_many(self, requests: list[Submit]) -> list[SubmitReply]:
        """Accept a batch of submits with one durable journal write: every reply waits for it."""
        replies: list[SubmitReply | None] = []
        accepted: list[tuple[int, JobRecord]] = []
        in_batch: dict[str, JobRecord] = {}
        for request in requests:
            request_id, spec = request.request_id, request.job
            if not spec.job_id:
                replies.append(SubmitReply(request_id=request_id, accepted=False, reason="job_id is empty"))
                continue
            existing = (in_batch.get(spec.job_id) or self._known(spec.job_id)
                        or await self.journal.get(spec.job_id))
            if existing is not None and existing.state in ("queued", "running", "done"):
                # A resubmit (the client timed out, or the edge resumed) is acknowledged, not repeated.
                replies.append(SubmitReply(request_id=request_id, accepted=True,
                                           reason=f"already {existing.state}", state=existing.state))
                continue
            if len(self.queue) + len(accepted) >= self.max_queue:
                replies.append(SubmitReply(request_id=request_id, accepted=False, reason="queue full",
                                           state="", retry_after_s=max(1.0, self.heartbeat_s * 5)))
                continue
            if not spec.submitted_at:
                spec = msgspec.structs.replace(spec, submitted_at=time.time())
            record = JobRecord(spec=spec)
            in_batch[spec.job_id] = record
            accepted.append((len(replies), record))
            replies.append(None)
        if accepted:
            # Durable before any client hears "accepted": one commit (one fsync) for the batch.
            try:
                await self.journal.save_many([record for _, record in accepted])
            except OSError as exc:
                if not _no_room(exc):
                    raise
                log.warning("broker: refused %d submit(s): %s", len(accepted), exc)
                for index, _ in accepted:
                    replies[index] = SubmitReply(request_id=requests[index].request_id, accepted=False,
                                                 reason=NO_ROOM, retry_after_s=10.0)
                return [reply for reply in replies if reply is not None]
            for index, record in accepted:
                spec = record.spec
                self.jobs[spec.job_id] = record
                self.queue.push(spec.job_id, spec.priority)
                self.publish(JobQueued(job_id=spec.job_id, priority=spec.priority, attempt=0))
                replies[index] = SubmitReply(request_id=requests[index].request_id, accepted=True,
                                             state=record.state)
            self._observe_queue()
            await self.dispatch()
        return [reply for reply in replies if reply is not None]

    async def cancel(self, job_id: str) -> tuple[bool, str]:
        record = self.jobs.get(job_id)
        if record is None:
            stored = self._unsaved.get(job_id) or await self.journal.get(job_id)
            return False, stored.state if stored else ""
        lease = self.leases.pop(job_id, None)
        if lease is not None and lease.worker is not None:
            await self.send_worker(lease.worker.identity, Abort(job_id=job_id, attempt=lease.attempt,
                                                                reason="cancelled"))
            lease.worker.lease = None  # busy until it says READY again
        self.queue.remove(job_id)
        record.state, record.reason, record.worker = "cancelled", "cancelled", ""
        await self.save(record)
        del self.jobs[job_id]
        self._count("cancelled")
        self.publish(JobCancelled(job_id=job_id))
        self._observe_queue()
        return True, "cancelled"

    async def job_info(self, job_id: str) -> JobInfo | None:
        record = self._known(job_id) or await self.journal.get(job_id)
        if record is None:
            return None
        lease = self.leases.get(job_id)
        if lease is None:
            return record.info()
        return record.info(progress=lease.fraction, fps=lease.fps, eta_s=lease.eta_s)

    def stats(self) -> FarmStats:
        now = time.monotonic()
        # Unhealthy: connected but silent for over two heartbeats (not yet purged).
        unhealthy = sum(1 for w in self.workers.values() if now - w.last_seen > 2 * self.heartbeat_s)
        active = sum(1 for w in self.workers.values() if not w.available)
        return FarmStats(
            total_workers=len(self.workers),
            active_workers=active,
            idle_workers=len(self.workers) - active,
            unhealthy_workers=unhealthy,
            total_tasks_processed=self.totals.done,
            total_tasks_failed=self.totals.failed,
            average_task_time=round(self.totals.done_seconds / self.totals.done, 3) if self.totals.done else 0.0,
            queue_length=len(self.queue),
            running_tasks=len(self.leases),
            max_queue_size=self.max_queue,
        )

    # -- events and metrics --------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        if self.publisher is not None:
            # PUB never blocks: a slow subscriber loses events past its high-water mark.
            self.publisher.send_multipart([topic(event), encode(event)], flags=zmq.NOBLOCK)

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.jobs.labels(outcome).inc()

    def _observe_queue(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_length.set(len(self.queue))
            self.metrics.running.set(len(self.leases))


def _prepare_ipc(endpoint: str) -> None:
    """ipc:// needs its directory; a stale socket file of a killed broker is rebound over."""
    if endpoint.startswith("ipc://"):
        from pathlib import Path

        Path(endpoint.removeprefix("ipc://")).parent.mkdir(parents=True, exist_ok=True)


class BrokerAlreadyRunning(Exception):
    """Another broker holds this node's lock: binding its ipc:// endpoints would steal them."""


def _node_lock(config: Config) -> int:
    """An exclusive flock on ``data/run/broker.lock`` (the kernel drops it when we die, even by
    kill -9): zmq binds ipc:// by unlinking whatever socket file is there, so a second broker
    would silently take the endpoints of a live one."""
    import fcntl
    import os

    path = config.storage.run_dir / "broker.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BrokerAlreadyRunning(f"another broker is running on this node ({path} is locked)") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


async def serve(ctx: Any) -> None:
    """The ``broker`` role (run by common.service.run_service)."""
    import os

    from streamgate.common.service import ServiceContext
    from streamgate.farm.journal import SqliteJournal
    from streamgate.farm.metrics import farm_metrics

    assert isinstance(ctx, ServiceContext)
    config = ctx.config
    lock = _node_lock(config)
    try:
        metrics = farm_metrics() if config.metrics.enabled else None
        broker = Broker(config, SqliteJournal(config.journal_path), metrics=metrics)
        await broker.start()
        ctx.ready(f"broker on {broker.endpoints.frontend}")
        try:
            await broker.run(ctx.stop)
        finally:
            await broker.close()
    finally:
        os.close(lock)
