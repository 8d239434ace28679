"""The one typed configuration: ``config.yaml`` plus environment overrides.

Only this module reads ``os.environ``. Every process builds one :class:`Config` at start and
passes it explicitly. An unknown key, a wrong type or a bad duration raises :class:`ConfigError`
naming the key path (``transcoder.scaling_policy.max_workers``).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import socket
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from streamgate.common import layout
from streamgate.common.redis_keys import RedisKeys
from streamgate.common.seed import SeedConfigError, check_service_name, normalise_tree
from streamgate.common.units import Bytes, Seconds, format_duration, format_size

CONFIG_ENV = "STREAMGATE_CONFIG"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key path."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class DeploymentConfig(_Section):
    # The seed's monolith / microservice are read as single / fleet (common/seed.py).
    mode: Literal["single", "fleet"] = "single"
    # The seed service this process is (api-gateway, transcoder, ...): under `streamgate run` in a
    # fleet it picks the role (common/seed.py SEED_SERVICES); empty: the command's role.
    service_name: str = ""
    node_name: str = ""  # empty: the host name
    version: str = ""  # empty: the installed package version


class ServerConfig(_Section):
    host: str = "0.0.0.0"
    port: int = 8080
    # Edge processes sharing the port with SO_REUSEPORT; 0 means one per CPU.
    workers: int = 0
    # The origin the public reaches this node at (SIWE domain, signed URLs, upload Locations);
    # empty: relative URLs, never the request's Host (edge/access/origin.py).
    public_url: str = ""
    # Whole-node budget for an ordered stop; covers the farm drain (drain_timeout + abort_grace).
    shutdown_timeout: Seconds = Seconds(30)
    control_port: int = 8090
    # A supervised process that dies (a role under `streamgate run`, an edge copy, a farm worker) is
    # restarted after restart_delay, doubling per restart up to restart_delay_max; one that had
    # stayed up restart_reset_after starts again from restart_delay (common/supervision.py).
    restart_delay: Seconds = Seconds(0.5)
    restart_delay_max: Seconds = Seconds(10)
    restart_reset_after: Seconds = Seconds(60)
    # The seed's timeouts, as stall timeouts on the edge (a request head not arriving, a response
    # write not moving); 0: edge.client_timeout.
    read_timeout: Seconds = Seconds(0)
    write_timeout: Seconds = Seconds(0)
    # Addresses or CIDR blocks of the load balancers in front of the edges: from a request that
    # arrives from one of them, the client is the last X-Forwarded-For hop that is not (rate
    # limits are per client). Empty: the peer address, whatever the request claims.
    trusted_proxies: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {entry!r} is not an IP address or CIDR block") from None

    def edge_read_timeout(self, edge: EdgeConfig) -> float:
        return float(self.read_timeout or edge.client_timeout)

    def edge_write_timeout(self, edge: EdgeConfig) -> float:
        return float(self.write_timeout or edge.client_timeout)


class GrpcConfig(_Section):
    # Accepted from the seed and logged: StreamGate has no gRPC (common/seed.py notices).
    port: int = 0


class NatsConfig(_Section):
    url: str = ""


class EventbusConfig(_Section):
    # Accepted from the seed and logged: StreamGate's roles use ZeroMQ, not a bus.
    type: Literal["", "memory", "nats"] = ""
    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)


class RateLimitConfig(_Section):
    enabled: bool = True
    api_per_second: float = 50.0
    api_burst: int = 100
    # tus upload creations (POST), never PATCHes: an honest upload is one creation (N+1 with
    # N parallel parts), however many chunks it is sent in.
    upload_per_second: float = 20.0
    upload_burst: int = 50
    # PATCH body bytes per second per client address and wallet (a bucket of one second's worth);
    # 0: no cap. Over it a PATCH answers 429 + Retry-After with what arrived kept.
    upload_bytes_per_second: Bytes = Bytes(0)


class EdgeConfig(_Section):
    # Objects up to this size (playlists, init segments) are kept in memory and in Redis.
    hot_object_max_size: Bytes = Bytes(256 * 1024)
    memory_cache_size: Bytes = Bytes(64 * 2**20)
    # Playlists of a video still transcoding change; VOD playlists do not.
    live_playlist_max_age: Seconds = Seconds(1)
    vod_playlist_max_age: Seconds = Seconds(3600)
    # Origin peer for files this edge lacks; empty: discovered in the registry, or none.
    origin_url: str = ""
    origin_timeout: Seconds = Seconds(30)
    disk_cache_size: Bytes = Bytes(10 * 2**30)
    client_timeout: Seconds = Seconds(60)
    max_header_size: Bytes = Bytes(8190)
    cors_allow_origin: str = "*"
    # Open-file cache (fd + stat + prebuilt headers per path) and how long a stat stays trusted.
    open_file_cache_entries: int = 2048
    open_file_cache_valid: Seconds = Seconds(1)
    # The raw HTTP/1.1 fast path for plain playback GET/HEAD (edge/fastpath/protocol.py); false: aiohttp only.
    fast_path: bool = True
    # Local files up to this size (and every playlist) are answered from memory; bigger ones by
    # sendfile, which copies less than a write from memory does.
    memory_serve_max_size: Bytes = Bytes(32 * 1024)
    # SO_SNDBUF for client sockets (0: kernel autotuning). Larger: fewer wakeups per big segment.
    socket_send_buffer: Bytes = Bytes(0)
    rate_limit: RateLimitConfig = msgspec.field(default_factory=RateLimitConfig)


class UploadsConfig(_Section):
    max_size: Bytes = Bytes(4 * 2**30)  # Tus-Max-Size
    expiration: Seconds = Seconds(24 * 3600)
    sweep_interval: Seconds = Seconds(600)
    max_priority: int = 10
    default_priority: int = 0
    # How often queued videos the broker has not accepted yet (down, full) are submitted again.
    resubmit_interval: Seconds = Seconds(5)
    # A client that reconnects may find its previous PATCH still holding the upload's lock for a
    # moment: wait this long for it, then answer 423.
    lock_wait: Seconds = Seconds(10)


class S3Config(_Section):
    endpoint: str = ""  # empty: AWS's endpoint for the region; SeaweedFS, MinIO: http://host:port
    bucket: str = ""
    region: str = "us-east-1"
    prefix: str = ""  # joined before every key: one bucket can hold several fleets
    access_key_id: str = ""
    secret_access_key: str = ""
    credentials_file: str = ""  # AWS shared-credentials INI ([default]) read when the keys are empty
    part_size: Bytes = Bytes(8 * 2**20)  # S3 refuses parts under 5 MiB (all but the last)
    connect_timeout: Seconds = Seconds(5)
    request_timeout: Seconds = Seconds(30)  # one call; a streamed read waits this long per chunk
    create_bucket: bool = False  # make the bucket at start when missing (tests, dev)


class StorageConfig(_Section):
    # Where sources and media live: disk (data_dir, one node) or an S3-compatible object store.
    backend: Literal["disk", "s3"] = "disk"
    data_dir: str = "./data"
    min_free_space: Bytes = Bytes(512 * 2**20)
    s3: S3Config = msgspec.field(default_factory=S3Config)

    @property
    def root(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def uploads_dir(self) -> Path:
        return self.root / layout.UPLOADS

    @property
    def sources_dir(self) -> Path:
        return self.root / layout.SOURCES

    @property
    def media_dir(self) -> Path:
        return self.root / layout.MEDIA

    @property
    def cache_dir(self) -> Path:
        return self.root / layout.CACHE

    @property
    def state_dir(self) -> Path:
        return self.root / layout.STATE

    @property
    def run_dir(self) -> Path:
        return self.root / layout.RUN


class CacheConfig(_Section):
    # Empty: no Redis (single node keeps catalog, limits and hot cache in-process and SQLite).
    redis_url: str = ""
    # Every Redis key StreamGate writes starts with this (common/redis_keys.py).
    redis_prefix: str = "sg:"
    hot_ttl: Seconds = Seconds(300)
    redis_max_object_size: Bytes = Bytes(1 * 2**20)


class BrokerConfig(_Section):
    # Empty endpoints are derived: ipc:// under data/run on a single node, tcp:// in a fleet.
    bind_host: str = "0.0.0.0"
    host: str = "127.0.0.1"  # where clients find the broker when no registry is used
    frontend_port: int = 5570  # edges submit, cancel and query
    backend_port: int = 5571  # workers
    publisher_port: int = 5572  # progress events
    heartbeat_interval: Seconds = Seconds(1)
    heartbeat_liveness: int = 3
    max_retries: int = 3
    # A failed job waits this long before its next attempt, doubling per failure (capped at 60 s).
    retry_backoff: Seconds = Seconds(1)
    stall_timeout: Seconds = Seconds(120)
    journal_path: str = ""  # empty: data/state/broker-journal.sqlite3
    # Finished jobs (done, failed, cancelled) older than this leave the journal (their outcomes
    # stay counted), so it stays bounded however many jobs pass; 0 keeps every job forever.
    journal_retention: Seconds = Seconds(7 * 24 * 3600)

    def endpoints(self, deployment: DeploymentConfig, storage: StorageConfig) -> BrokerEndpoints:
        if deployment.mode == "single":
            run = storage.run_dir
            return BrokerEndpoints(
                frontend=f"ipc://{run}/broker-frontend.sock",
                backend=f"ipc://{run}/broker-backend.sock",
                publisher=f"ipc://{run}/broker-events.sock",
            )
        return BrokerEndpoints(
            frontend=f"tcp://{self.host}:{self.frontend_port}",
            backend=f"tcp://{self.host}:{self.backend_port}",
            publisher=f"tcp://{self.host}:{self.publisher_port}",
        )


class BrokerEndpoints(msgspec.Struct, frozen=True):
    frontend: str
    backend: str
    publisher: str


class ScalingPolicy(_Section):
    min_workers: int = 2
    max_workers: int = 16
    target_queue_len: int = 10
    scale_up_threshold: float = 2.5
    scale_down_threshold: float = 0.5
    check_interval: Seconds = Seconds(10)
    # A worker whose job has run this long no longer counts as capacity for waiting jobs: the
    # pool starts another (within max_workers), so one long job cannot hold every short one; 0: off.
    long_job_after: Seconds = Seconds(60)


class TranscoderConfig(_Section):
    worker_pool_size: int = 4
    max_concurrent_tasks: int = 16
    max_queue_size: int = 1000
    task_timeout: Seconds = Seconds(3600)
    health_check_interval: Seconds = Seconds(30)
    scaling_policy: ScalingPolicy = msgspec.field(default_factory=ScalingPolicy)
    # The adaptive ladder by height; rungs above the source are skipped, never upscaled.
    ladder: list[int] = msgspec.field(default_factory=lambda: [1080, 720, 480, 360])
    preset: str = "veryfast"
    segment_duration: Seconds = Seconds(4)
    # The first segment of every rung may be shorter, so a player starts sooner (0: as long as
    # the rest); later boundaries follow it a whole segment_duration apart.
    first_segment_duration: Seconds = Seconds(1)
    crf: int = 23
    audio_bitrate: int = 128_000
    # Frames in flight between the decoder and the encoders (bounded shared-memory ring).
    ring_slots: int = 8
    # VBV cap of a 1080p30 rung in bit/s; other rungs scale with pixels ** 0.75, x1.5 above 30 fps.
    peak_bitrate_1080p: int = 5_000_000
    bufsize_factor: float = 2.0  # x264 VBV buffer = cap x this (seconds of the cap)
    x264_threads: int = 0  # threads per encoder process; 0: the cores split among rungs by pixels
    x264_params: str = ""  # extra x264 options "key=value:key=value" for every rung
    encoder_stall_timeout: Seconds = Seconds(120)  # no encoder progress this long fails the job
    mpd_schema: str = ""  # DASH-MPD.xsd for the gate; empty: the one shipped in the package
    # SIGTERM: a running job gets this long to finish, then it is cancelled and handed back.
    drain_timeout: Seconds = Seconds(5)
    # A cancelled or aborted run that has not stopped after this long is wedged: its worker exits.
    abort_grace: Seconds = Seconds(5)
    # Bounded cost per upload: the probe refuses a source above this many pixels per picture
    # (4096x2304) or longer than this, before a frame ring or an encoder exists; 0: no limit.
    max_source_pixels: int = 4096 * 2304
    max_source_duration: Seconds = Seconds(24 * 3600)
    # A source that decodes to less than this share of its declared duration is truncated or
    # corrupt: the job fails rather than publishing a half video as ready; 0: off.
    min_decoded_ratio: float = 0.9
    # Address-space limit (RLIMIT_AS) of each worker and encoder process, and CPU seconds
    # (RLIMIT_CPU) each of them may spend on one job; a hit fails the job with the reason; 0: off.
    worker_memory_limit: Bytes = Bytes(8 * 2**30)
    cpu_time_limit_per_job: Seconds = Seconds(4 * 3600)


class RegistryConfig(_Section):
    type: Literal["none", "static", "consul"] = "none"
    consul_address: str = "http://127.0.0.1:8500"  # the seed's registry.consul.address is read too
    # Prefix of every Consul service name (<prefix>-edge, ...); deployment.service_name until the
    # seed's meaning of that key (which service this is) took it.
    service_prefix: str = "streamgate"
    consul_token: str = ""
    check_interval: Seconds = Seconds(10)
    ttl: Seconds = Seconds(15)
    deregister_critical_after: Seconds = Seconds(600)
    # Static addresses: the fallback when no registry answers.
    static_origins: list[str] = msgspec.field(default_factory=list)
    # The address registered for this instance; empty: the local address that routes to Consul.
    advertise_address: str = ""
    # Extra tags on every registered service (the role and the deployment mode are always tagged).
    tags: list[str] = msgspec.field(default_factory=list)
    # Longest wait of one blocking query (Consul's ?wait=) when watching for changes.
    watch_wait: Seconds = Seconds(30)
    # KV prefix of StreamGate's keys: <prefix>/scaling/farm_workers, <prefix>/broker/leader.
    kv_prefix: str = "streamgate"
    # Whether this process registers itself; copies of a process serving the same port (the
    # edge's SO_REUSEPORT workers) set false and leave it to the first one.
    register: bool = True


class ControlConfig(_Section):
    """The control service (fleet view, scaling decision) and broker leadership."""

    # How often the control service recomputes the scaling decision and fleet figures.
    refresh_interval: Seconds = Seconds(5)
    # Publish the scaling decision to Consul KV (when registry.type is consul).
    publish_scaling: bool = True
    # Timeout of one scrape of an edge or a broker for the fleet view.
    scrape_timeout: Seconds = Seconds(2)
    # Broker failover: the leader holds a Consul session lock; the session dies with the broker's
    # TTL check, so a standby takes over about one registry.ttl after the leader stops refreshing.
    broker_lock_delay: Seconds = Seconds(1)


class AuthConfig(_Section):
    required: bool = True
    domain: str = ""  # empty: server.public_url's authority (edge/access/origin.py)
    chain_ids: list[int] = msgspec.field(default_factory=lambda: [1])
    nonce_ttl: Seconds = Seconds(300)
    token_ttl: Seconds = Seconds(24 * 3600)
    signed_url_ttl: Seconds = Seconds(3600)
    # Token signing key; empty: read from (or created in) secret_file with mode 0600.
    secret: str = ""
    secret_file: str = ""  # empty: data/state/auth-secret


class MetricsConfig(_Section):
    enabled: bool = True
    multiproc_dir: str = ""  # empty: data/run/prometheus


class Config(_Section):
    deployment: DeploymentConfig = msgspec.field(default_factory=DeploymentConfig)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    grpc: GrpcConfig = msgspec.field(default_factory=GrpcConfig)
    eventbus: EventbusConfig = msgspec.field(default_factory=EventbusConfig)
    edge: EdgeConfig = msgspec.field(default_factory=EdgeConfig)
    uploads: UploadsConfig = msgspec.field(default_factory=UploadsConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    cache: CacheConfig = msgspec.field(default_factory=CacheConfig)
    broker: BrokerConfig = msgspec.field(default_factory=BrokerConfig)
    transcoder: TranscoderConfig = msgspec.field(default_factory=TranscoderConfig)
    registry: RegistryConfig = msgspec.field(default_factory=RegistryConfig)
    control: ControlConfig = msgspec.field(default_factory=ControlConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)

    @property
    def node_name(self) -> str:
        return self.deployment.node_name or socket.gethostname()

    @property
    def broker_endpoints(self) -> BrokerEndpoints:
        return self.broker.endpoints(self.deployment, self.storage)

    @property
    def redis_keys(self) -> RedisKeys:
        return RedisKeys(self.cache.redis_prefix)

    @property
    def journal_path(self) -> Path:
        return Path(self.broker.journal_path) if self.broker.journal_path else (
            self.storage.state_dir / layout.JOURNAL_DB
        )

    @property
    def auth_secret_file(self) -> Path:
        return Path(self.auth.secret_file) if self.auth.secret_file else (
            self.storage.state_dir / layout.AUTH_SECRET
        )

    @property
    def metrics_dir(self) -> Path:
        return Path(self.metrics.multiproc_dir) if self.metrics.multiproc_dir else (
            self.storage.run_dir / layout.PROMETHEUS
        )


# The names operators already use, then STREAMGATE__SECTION__KEY for any other key.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "DEPLOYMENT_MODE": ("deployment", "mode"),
    "SERVICE_NAME": ("deployment", "service_name"),
    "SERVER_PORT": ("server", "port"),
    "GRPC_PORT": ("grpc", "port"),
    "EVENTBUS_TYPE": ("eventbus", "type"),
    "NATS_URL": ("eventbus", "nats", "url"),
    "REGISTRY_TYPE": ("registry", "type"),
    "CONSUL_ADDRESS": ("registry", "consul_address"),
    "TRANSCODER_WORKERS": ("transcoder", "worker_pool_size"),
    "TRANSCODER_MAX_TASKS": ("transcoder", "max_concurrent_tasks"),
    "REDIS_URL": ("cache", "redis_url"),
    "STREAMGATE_DATA_DIR": ("storage", "data_dir"),
    "AWS_ACCESS_KEY_ID": ("storage", "s3", "access_key_id"),
    "AWS_SECRET_ACCESS_KEY": ("storage", "s3", "secret_access_key"),
    "AWS_REGION": ("storage", "s3", "region"),
    "S3_ENDPOINT": ("storage", "s3", "endpoint"),
    "S3_BUCKET": ("storage", "s3", "bucket"),
    "AUTH_REQUIRED": ("auth", "required"),
}
_GENERIC_PREFIX = "STREAMGATE__"
_PATH_IN_MESSAGE = re.compile(r" - at `\$\.?([^`]*)`")


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is Seconds:
        return Seconds.parse(value)
    if kind is Bytes:
        return Bytes.parse(value)
    raise NotImplementedError(f"cannot decode {kind!r}")


def _enc_hook(value: Any) -> Any:
    if isinstance(value, Seconds):
        return format_duration(value)
    if isinstance(value, Bytes):
        text = format_size(value)
        return int(value) if text.isdigit() else text
    raise NotImplementedError(f"cannot encode {type(value)!r}")


def _env_value(raw: str) -> Any:
    # Environment values are strings; YAML scalars give "8" -> 8 and "false" -> False.
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def _apply_env(tree: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, path in ENV_OVERRIDES.items():
        if name in env:
            _set_path(tree, path, _env_for(path, env[name]))
    for name, value in env.items():
        if name.startswith(_GENERIC_PREFIX) and len(name) > len(_GENERIC_PREFIX):
            path = tuple(p.lower() for p in name[len(_GENERIC_PREFIX):].split("__"))
            _set_path(tree, path, _env_for(path, value))


def _env_for(path: tuple[str, ...], raw: str) -> Any:
    """A text key's value stays the text as written (a secret of ``12345`` or a data dir of
    ``123`` is a string); any other key's is read as a YAML scalar (``8``, ``false``, ``[1, 2]``)."""
    return raw if _is_text(path) else _env_value(raw)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_text(path: tuple[str, ...]) -> bool:
    kind: Any = Config
    for part in path:
        if not (isinstance(kind, type) and issubclass(kind, msgspec.Struct)):
            return False
        kind = _hints(kind).get(part)
        if kind is None:
            return False  # an unknown key: decoding names it
    if typing.get_origin(kind) is typing.Literal:
        return all(isinstance(arg, str) for arg in typing.get_args(kind))
    return kind is str


def config_path(explicit: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None) -> Path | None:
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    default = Path("config.yaml")
    return default if default.exists() else None


def load_config(path: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (or ``$STREAMGATE_CONFIG``, or ``./config.yaml``), apply env overrides, validate."""
    env = os.environ if env is None else env
    source = config_path(path, env)
    tree: dict[str, Any] = {}
    if source is not None:
        try:
            text = source.read_text()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the config file: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        tree = loaded or {}
    try:
        # The seed's spellings first, so an environment override still beats the file.
        normalise_tree(tree)
    except SeedConfigError as exc:
        raise ConfigError(f"{source or 'defaults'}: {exc}") from None
    _apply_env(tree, env)
    return config_from_tree(tree, origin=str(source) if source else "defaults")


def config_from_tree(tree: Mapping[str, Any], origin: str = "config") -> Config:
    try:
        if isinstance(tree, dict):
            normalise_tree(tree)
    except SeedConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    try:
        config = msgspec.convert(tree, Config, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{origin}: {_explain(str(exc))}") from None
    _check(config, origin)
    return config


def _explain(message: str) -> str:
    match = _PATH_IN_MESSAGE.search(message)
    if not match:
        top = re.match(r"Object contains unknown field `([^`]*)`", message)
        return f"{top.group(1)}: unknown key" if top else message
    where = match.group(1) or "(top level)"
    what = message[: match.start()].replace("`", "")
    if what.startswith("Object contains unknown field "):
        field = what.removeprefix("Object contains unknown field ")
        key = f"{where}.{field}" if match.group(1) else field
        return f"{key}: unknown key"
    return f"{where}: {what}"


def _check(config: Config, origin: str) -> None:
    """Rules the types alone do not say."""
    rules: list[tuple[bool, str, str]] = [
        (1 <= config.server.port <= 65535, "server.port", "must be between 1 and 65535"),
        (config.server.workers >= 0, "server.workers", "must be 0 (one per CPU) or more"),
        (config.transcoder.worker_pool_size >= 0, "transcoder.worker_pool_size", "must be >= 0"),
        (config.transcoder.max_queue_size >= 1, "transcoder.max_queue_size", "must be >= 1"),
        (config.transcoder.scaling_policy.min_workers <= config.transcoder.scaling_policy.max_workers,
         "transcoder.scaling_policy.min_workers", "must not exceed max_workers"),
        (config.transcoder.segment_duration > 0, "transcoder.segment_duration", "must be positive"),
        (bool(config.transcoder.ladder) and all(h > 0 for h in config.transcoder.ladder),
         "transcoder.ladder", "must list positive rendition heights"),
        (config.transcoder.ring_slots >= 2, "transcoder.ring_slots", "must be >= 2"),
        (config.broker.heartbeat_liveness >= 1, "broker.heartbeat_liveness", "must be >= 1"),
        (config.broker.max_retries >= 0, "broker.max_retries", "must be >= 0"),
        (config.storage.backend != "s3" or bool(config.storage.s3.bucket), "storage.s3.bucket",
         "the s3 backend needs a bucket (or S3_BUCKET)"),
        (config.storage.s3.part_size >= 5 * 2**20, "storage.s3.part_size", "must be at least 5MiB (S3's minimum part)"),
        (config.storage.s3.request_timeout > 0 and config.storage.s3.connect_timeout > 0,
         "storage.s3.request_timeout", "timeouts must be positive"),
        (config.deployment.mode == "single" or bool(config.cache.redis_url), "cache.redis_url",
         "a fleet shares Redis: set cache.redis_url (or REDIS_URL)"),
    ]
    for ok, key, why in rules:
        if not ok:
            raise ConfigError(f"{origin}: {key}: {why}")
    if (service := check_service_name(config.deployment.service_name)) is not None:
        raise ConfigError(f"{origin}: deployment.service_name: {service}")


def dump_config(config: Config) -> str:
    """The effective config as YAML, durations and sizes in their readable units."""
    tree = msgspec.to_builtins(config, enc_hook=_enc_hook)
    return yaml.safe_dump(tree, sort_keys=False)


class SystemdEnvironment(msgspec.Struct, frozen=True):
    """What systemd hands a service in its environment (sd_notify(3), sd_watchdog_enabled(3))."""

    notify_socket: str | None = None
    watchdog_usec: int | None = None


def systemd_environment(env: Mapping[str, str] | None = None) -> SystemdEnvironment:
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    watchdog = int(usec) if usec.isdigit() and (not pid or pid == str(os.getpid())) else None
    return SystemdEnvironment(env.get("NOTIFY_SOCKET") or None, watchdog)


SUPERVISOR_PID_ENV = "STREAMGATE_SUPERVISOR_PID"
# What systemd hands the unit's main process alone: a child that kept them would speak for the unit.
UNIT_ENV_NAMES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")


def child_environment(supervisor: int, **extra: str) -> dict[str, str]:
    """This process's environment for a child it supervises, without the unit's systemd variables."""
    env = {k: v for k, v in os.environ.items() if k not in UNIT_ENV_NAMES}
    env[SUPERVISOR_PID_ENV] = str(supervisor)
    env.update(extra)
    return env


def supervisor_pid(env: Mapping[str, str] | None = None) -> int | None:
    """The pid of the ``streamgate run`` that started this process, so it can die with it."""
    value = (os.environ if env is None else env).get(SUPERVISOR_PID_ENV, "")
    return int(value) if value.isdigit() else None
