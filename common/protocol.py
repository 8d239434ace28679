"""The farm's wire protocol: every message between workers, the broker and its clients.

One msgspec Struct per message, msgpack on the wire, one tagged union per channel, decoded by a
typed :class:`msgspec.msgpack.Decoder` built once per socket (a bad frame fails at the boundary;
inner code trusts the types). Evolve messages the msgspec way: new fields get defaults, never
retype a field.

Channels (the ZeroMQ guide's Paranoid Pirate / Majordomo shapes):

* workers: DEALER -> broker ROUTER ``backend``; frames ``[WORKER, payload]``.
  Worker -> broker: :data:`WorkerMessage`; broker -> worker: :data:`BrokerMessage`. Both sides send
  :class:`Heartbeat` every ``broker.heartbeat_interval``; a peer silent for interval x liveness is
  dead (the worker reconnects with a fresh socket, the broker requeues the worker's job).
* clients (edges, control plane, CLI): DEALER -> broker ROUTER ``frontend``; frames
  ``[CLIENT, payload]``; every request carries a ``request_id`` echoed by its reply, so a late
  reply to an abandoned request is recognised and dropped.
* events: broker PUB ``publisher``; frames ``[topic, payload]``, topic = ``b"job."`` + tag
  (``b"job.progress"``...), so a SUB may filter by prefix. PUB drops what a slow or late
  subscriber misses: the job's state is always available by query as well.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from streamgate.common.media import TranscodeResult

# Frame 1 of every worker / client message: the protocol and its version (as MDP's "MDPW01").
WORKER = b"SGFW01"
CLIENT = b"SGFC01"
# Event topics: TOPIC_PREFIX + the event's tag.
TOPIC_PREFIX = b"job."
TICK_TOPIC = b"farm.tick"

# A worker that lost the broker reconnects after a doubling backoff, from one heartbeat interval
# up to this many (the guide's INTERVAL_MAX); the broker waits as long for a running job's worker
# to come back after a broker restart.
RECONNECT_MAX_INTERVALS = 8
RECONNECT_MAX_S = 10.0


def reconnect_max_s(heartbeat_interval_s: float) -> float:
    return min(RECONNECT_MAX_S, heartbeat_interval_s * RECONNECT_MAX_INTERVALS)


JobState = Literal["queued", "running", "done", "failed", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})


class _Message(msgspec.Struct, kw_only=True, tag_field="type"):
    pass


class JobSpec(msgspec.Struct, kw_only=True, frozen=True):
    """One transcode job; ``job_id`` is the video id."""

    job_id: str
    source: str  # path of the uploaded source file
    out_dir: str  # data/media/<id>/
    priority: int = 0  # higher first; FIFO within a priority
    # Overrides of config.transcoder for this job (TranscodeSettings.from_config(**settings)).
    settings: dict[str, Any] = msgspec.field(default_factory=dict)
    submitted_at: float = 0.0  # unix time, set by the submitter
    # In a fleet (storage.backend: s3) jobs name objects, not paths: the source object and the
    # prefix the ladder is published under (common/layout.py source_key, media_prefix). Empty on
    # a single node, where ``source`` and ``out_dir`` are this host's paths.
    source_key: str = ""
    media_prefix: str = ""


# -- workers <-> broker ------------------------------------------------------------------------


class Ready(_Message, tag="ready"):
    """A worker (re)connected and takes work; ``job_id`` names a job it still runs (re-adoption
    after a broker restart), with the ``attempt`` it was given."""

    worker_id: str
    pid: int = 0
    host: str = ""
    job_id: str | None = None
    attempt: int = 0


class Heartbeat(_Message, tag="heartbeat"):
    pass


class Progress(_Message, tag="progress"):
    job_id: str
    attempt: int
    frames: int  # decoded frames so far: the stall watchdog watches this advance
    fraction: float  # 0..1
    fps: float = 0.0
    eta_s: float | None = None
    stage: str = ""


class Done(_Message, tag="done"):
    job_id: str
    attempt: int
    result: TranscodeResult
    elapsed_s: float = 0.0


class Failed(_Message, tag="failed"):
    job_id: str
    attempt: int
    reason: str
    retryable: bool = True


class HandBack(_Message, tag="handback"):
    """A draining worker gives its running job back; the broker requeues it at once."""

    job_id: str
    attempt: int
    reason: str = "worker draining"


class Disconnect(_Message, tag="disconnect"):
    """Worker -> broker: leaving. Broker -> worker: unknown to me, reconnect (and READY)."""

    reason: str = ""


class Drain(_Message, tag="drain"):
    """A worker stops taking jobs (SIGTERM): it finishes or hands back its run, then disconnects."""


class Assign(_Message, tag="assign"):
    job: JobSpec
    attempt: int  # 1 for the first run; the lease is (job_id, attempt)


class Abort(_Message, tag="abort"):
    """The worker lost the lease (cancel, task timeout, stall): stop the job and drop it."""

    job_id: str
    attempt: int
    reason: str


WorkerMessage = Ready | Heartbeat | Progress | Done | Failed | HandBack | Drain | Disconnect
BrokerMessage = Assign | Heartbeat | Abort | Disconnect


# -- clients <-> broker ------------------------------------------------------------------------


class Submit(_Message, tag="submit"):
    request_id: int
    job: JobSpec


class Cancel(_Message, tag="cancel"):
    request_id: int
    job_id: str


class Query(_Message, tag="query"):
    request_id: int
    job_id: str


class GetStats(_Message, tag="stats"):
    request_id: int


class JobInfo(msgspec.Struct, kw_only=True):
    job_id: str
    state: JobState
    priority: int = 0
    attempts: int = 0  # runs started so far
    progress: float = 0.0
    fps: float = 0.0
    eta_s: float | None = None
    reason: str = ""  # why the last attempt failed, or why the job is dead-lettered
    worker: str = ""
    submitted_at: float = 0.0
    updated_at: float = 0.0
    result: TranscodeResult | None = None


class FarmStats(msgspec.Struct, kw_only=True):
    """The figures of ``GET /api/v1/farm/metrics``."""

    total_workers: int = 0
    active_workers: int = 0
    idle_workers: int = 0
    unhealthy_workers: int = 0
    total_tasks_processed: int = 0
    total_tasks_failed: int = 0
    average_task_time: float = 0.0  # seconds per successful task
    queue_length: int = 0
    running_tasks: int = 0
    max_queue_size: int = 0


class SubmitReply(_Message, tag="submit_reply"):
    request_id: int
    accepted: bool
    reason: str = ""  # "queue full" when refused; "already queued" etc. for a repeated id
    state: str = ""
    retry_after_s: float = 0.0


class CancelReply(_Message, tag="cancel_reply"):
    request_id: int
    cancelled: bool
    state: str = ""  # the job's state after the request ("" when unknown)


class JobReply(_Message, tag="job_reply"):
    request_id: int
    info: JobInfo | None = None


class StatsReply(_Message, tag="stats_reply"):
    request_id: int
    stats: FarmStats


class ErrorReply(_Message, tag="error"):
    request_id: int
    reason: str


ClientRequest = Submit | Cancel | Query | GetStats
ClientReply = SubmitReply | CancelReply | JobReply | StatsReply | ErrorReply


# -- events (PUB) ------------------------------------------------------------------------------


class JobQueued(_Message, tag="queued"):
    job_id: str
    priority: int = 0
    attempt: int = 0  # runs so far; > 0 when requeued after a failure or hand-back


class JobStarted(_Message, tag="started"):
    job_id: str
    attempt: int
    worker: str = ""


class JobProgress(_Message, tag="progress"):
    job_id: str
    attempt: int
    fraction: float
    fps: float = 0.0
    eta_s: float | None = None
    frames: int = 0
    stage: str = ""


class JobDone(_Message, tag="done"):
    job_id: str
    attempts: int
    result: TranscodeResult
    elapsed_s: float = 0.0


class JobFailed(_Message, tag="failed"):
    job_id: str
    attempt: int
    reason: str
    final: bool  # True: dead-lettered after the retry limit; False: requeued


class JobCancelled(_Message, tag="cancelled"):
    job_id: str


class Tick(_Message, tag="tick"):
    """Published every heartbeat interval: lets a subscriber know its subscription is live."""

    queue_length: int = 0
    at: float = 0.0


JobEvent = JobQueued | JobStarted | JobProgress | JobDone | JobFailed | JobCancelled
Event = JobEvent | Tick


def topic(event: Event) -> bytes:
    if isinstance(event, Tick):
        return TICK_TOPIC
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)  # every event Struct is tagged with its name
    return TOPIC_PREFIX + tag.encode()


encoder = msgspec.msgpack.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    return encoder.encode(message)


class ProtocolError(Exception):
    """A frame that does not decode as a message of its channel."""


# The control plane's scaling decision (control/scaling.py decides, common/consul/discovery.py
# follows it from Consul KV).
Action = Literal["scale_up", "scale_down", "hold"]


class ScalingDecision(msgspec.Struct, frozen=True, kw_only=True):
    """What control answers on ``GET /api/v1/scaling`` and stores in Consul KV."""

    farm_workers: int  # the fleet-wide target
    per_farm: int  # the target of each farm (fleet target split across the farms, rounded up)
    current_workers: int
    active_workers: int
    queue_length: int
    farms: int
    pressure: float  # waiting jobs per worker over target_queue_len
    action: Action
    reason: str
    decided_at: float = 0.0
