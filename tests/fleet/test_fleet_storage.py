"""The fleet of issue 12 on hosts that share no disk: each host a network namespace with a private
data dir, on one bridge.

services (Redis, the Consul stand-in, SeaweedFS with its S3 gateway), broker-a and broker-b
(failover through Consul), farm, edge-a, edge-b and control, each a real ``streamgate`` process
started by ``ip netns exec`` with its own config.yaml. A clip is uploaded with tuspy to edge A,
stopped half-way and resumed at edge B; every HLS and DASH file plays from both edges (ffmpeg over
HTTP, every URI the playlists and the MPD name, byte-identical from both); a second upload's job
survives a SIGKILL of the leader broker and completes exactly once; a token from A signs a URL and
deletes a video on B.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from lb import Players, haproxy_config
from netns import Host, Network, clean_env, netns_unavailable
from storage_support import start_seaweedfs, stop_seaweedfs
from support import wait_healthy, wait_until

from streamgate.common.config import config_from_tree
from streamgate.common.synth import make_video
from streamgate.farm.failover import journal_prefix, lock_key

# 1-3 min on the shared 2-core machine: part of `make test` (not the nspawn `fleet` marker).
pytestmark = pytest.mark.timeout(600)

TESTS = Path(__file__).resolve().parent.parent
STANDIN = TESTS / "control" / "consul_standin.py"
SECRET = "one-secret-for-the-whole-fleet-0123456789"
KV_PREFIX = "sgfleet"
EDGE_PORT = 8080
CONTROL_PORT = 8090
BROKER_PORTS = (5570, 5571, 5572)
PART_SIZE = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    net = Network(tmp_path_factory.mktemp("fleet")).start()
    try:
        yield net
    finally:
        problems = net.teardown()
        assert net.leftovers() == [], net.leftovers()
        assert problems == [], problems


class Fleet:
    def __init__(self, net: Network) -> None:
        self.net = net
        self.services = net.add_host("services")
        self.weed: Any = None
        self.s3: Any = None

    def tree(self, host: Host) -> dict[str, Any]:
        svc = self.services.address
        return {
            "deployment": {"mode": "fleet", "node_name": host.name},
            # public_url: the origin SIWE messages name (never the request's Host); each edge is
            # reached at its own address here, where a fleet would put one load balancer.
            "server": {"host": "0.0.0.0", "port": EDGE_PORT, "workers": 1, "control_port": CONTROL_PORT,
                       "shutdown_timeout": "5s", "public_url": f"http://{host.address}:{EDGE_PORT}"},
            "storage": {**self.s3.storage_tree("fleet", part_size="5MiB"), "data_dir": str(host.data_dir / "data"),
                        "min_free_space": 0},
            "cache": {"redis_url": f"redis://{svc}:6379/0"},
            "broker": {"frontend_port": BROKER_PORTS[0], "backend_port": BROKER_PORTS[1],
                       "publisher_port": BROKER_PORTS[2], "heartbeat_interval": "250ms",
                       "heartbeat_liveness": 5, "stall_timeout": "60s", "max_retries": 2},
            # advertise_address is left empty, as a new user would: the address that routes to Consul.
            "registry": {"type": "consul", "consul_address": f"http://{svc}:8500", "ttl": "2s",
                         "watch_wait": "5s", "check_interval": "1s", "kv_prefix": KV_PREFIX},
            "control": {"broker_lock_delay": "1s", "refresh_interval": "1s"},
            "auth": {"required": True, "secret": SECRET},
            "uploads": {"resubmit_interval": "1s"},
            "transcoder": {"ladder": [240, 144], "preset": "ultrafast", "segment_duration": "1s",
                           "task_timeout": "5m", "worker_pool_size": 1, "health_check_interval": "2s",
                           "drain_timeout": "2s",
                           "scaling_policy": {"min_workers": 1, "max_workers": 1, "check_interval": "1s"}},
            "metrics": {"enabled": False},
        }

    def start_services(self) -> None:
        svc = self.services
        svc.spawn("redis", ["redis-server", "--bind", svc.address, "--port", "6379", "--protected-mode", "no",
                            "--save", "", "--appendonly", "no", "--dir", str(svc.data_dir)])
        svc.spawn("consul", [sys.executable, str(STANDIN), "--host", svc.address, "--port", "8500"],
                  env=clean_env())
        self.weed, self.s3 = start_seaweedfs(svc.data_dir / "weed", ip=svc.address, wrapper=svc.wrapper,
                                             timeout=120)
        wait_until(lambda: _answers(f"http://{svc.address}:8500/v1/status/leader"), timeout=30,
                   what="the Consul stand-in")
        wait_until(lambda: _redis_ping(svc.address), timeout=30, what="redis on the services host")

    def start_role(self, name: str, role: str) -> tuple[Host, subprocess.Popen[bytes], Path]:
        host = self.net.add_host(name)
        config = host.data_dir / "config.yaml"
        config.write_text(yaml.safe_dump(self.tree(host)))
        proc, log = host.spawn(role, [sys.executable, "-m", "streamgate", "--config", str(config), role],
                               env=clean_env())
        return host, proc, log

    def config(self, host: Host) -> Any:
        return config_from_tree(self.tree(host))


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code < 500
    except requests.RequestException:
        return False


def _redis_ping(address: str) -> bool:
    import redis

    try:
        client = redis.Redis(host=address, port=6379, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def consul_kv(fleet: Fleet, key: str) -> str:
    r = requests.get(f"http://{fleet.services.address}:8500/v1/kv/{key}", timeout=5)
    if r.status_code == 404:
        return ""
    entry = r.json()[0]
    if not entry.get("Session") or entry.get("Value") is None:
        return ""
    import base64

    return base64.b64decode(entry["Value"]).decode()


def sign_in(base: str, workdir: Path) -> tuple[str, str]:
    """Sign in with Ethereum at ``base`` (the CLI's client, eth-account); (token, address)."""
    from streamgate.control.edge_client import EdgeClient

    client = EdgeClient(base, workdir / "wallet.key")
    try:
        address = client.sign_in()
        return client.token, address
    finally:
        client.close()


def video(base: str, video_id: str, token: str = "") -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = requests.get(f"{base}/api/v1/videos/{video_id}", headers=headers, timeout=10)
    if r.status_code == 404:
        return None
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def wait_ready(base: str, video_id: str, timeout: float, token: str = "") -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        v = video(base, video_id, token)
        assert v is None or v["status"] != "failed", v
        return v if v is not None and v["status"] == "ready" else None

    return wait_until(ready, timeout=timeout, interval=0.5, what=f"video {video_id} ready")


def hls_uris(text: str) -> list[str]:
    uris = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    uris += re.findall(r'URI="([^"]+)"', text)
    return uris


def mpd_uris(text: str) -> list[str]:
    """Every URI a static MPD names: each representation's init and media segments."""
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    root = ET.fromstring(text)
    assert root.get("type", "static") == "static", root.attrib
    found: list[str] = []
    for adaptation in root.iter(f"{{{ns['d']}}}AdaptationSet"):
        outer = adaptation.find("d:SegmentTemplate", ns)
        for rep in adaptation.findall("d:Representation", ns):
            template = rep.find("d:SegmentTemplate", ns)
            template = template if template is not None else outer
            assert template is not None, ET.tostring(rep)
            rid, bandwidth = rep.get("id", ""), rep.get("bandwidth", "")

            if template.get("initialization"):
                found.append(_fill(template.get("initialization", ""), rid, bandwidth))
            media = template.get("media", "")
            start = int(template.get("startNumber", "1"))
            timeline = template.find("d:SegmentTimeline", ns)
            if timeline is not None:
                number, t = start, 0
                for s in timeline.findall("d:S", ns):
                    t = int(s.get("t", t))
                    for _ in range(int(s.get("r", "0")) + 1):
                        found.append(_fill(media, rid, bandwidth, number, t))
                        number, t = number + 1, t + int(s.get("d", "0"))
            else:
                total = _iso_seconds(root.get("mediaPresentationDuration", "PT0S"))
                seg = int(template.get("duration", "0")) / int(template.get("timescale", "1"))
                count = int(-(-total // seg))
                found += [_fill(media, rid, bandwidth, start + i) for i in range(count)]
    return found


def _fill(pattern: str, rid: str, bandwidth: str, number: int | None = None, t: int | None = None) -> str:
    """A SegmentTemplate URL with its $identifiers$ (ISO/IEC 23009-1 5.3.9.4.4) substituted."""
    def sub(m: re.Match[str]) -> str:
        name, fmt = m.group(1), m.group(2) or "%01d"
        if name == "RepresentationID":
            return rid
        if name == "Bandwidth":
            return bandwidth
        value = number if name == "Number" else t
        assert value is not None, pattern
        return fmt % value
    return re.sub(r"\$(RepresentationID|Number|Time|Bandwidth)(%0\d+d)?\$", sub, pattern)


def _iso_seconds(value: str) -> float:
    m = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:([\d.]+)S)?", value)
    assert m, value
    h, mi, s = m.groups()
    return int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


def crawl(base: str, video_id: str) -> dict[str, bytes]:
    """Every file the master playlist, its media playlists and the MPD name, fetched from ``base``."""
    root = f"{base}/videos/{video_id}/"
    files: dict[str, bytes] = {}
    todo = ["master.m3u8", "manifest.mpd"]
    while todo:
        rel = todo.pop()
        if rel in files:
            continue
        r = requests.get(urllib.parse.urljoin(root, rel), timeout=30)
        assert r.status_code == 200, (base, rel, r.status_code, r.text[:300])
        files[rel] = r.content
        folder = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
        if rel.endswith(".m3u8"):
            todo += [urllib.parse.urljoin("/" + folder, u).lstrip("/") for u in hls_uris(r.text)]
        elif rel.endswith(".mpd"):
            todo += [urllib.parse.urljoin("/" + folder, u).lstrip("/") for u in mpd_uris(r.text)]
    return files


def play(url: str) -> None:
    """ffmpeg reads every packet of the stream over HTTP; ffprobe sees video and audio."""
    done = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", url, "-map", "0", "-c", "copy",
                           "-f", "null", "-"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not done.stderr.strip(), (url, done.stderr[-2000:])
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", url],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, (url, probe.stderr[-2000:])
    kinds = {s["codec_type"] for s in json.loads(probe.stdout)["streams"]}
    assert {"video", "audio"} <= kinds, (url, kinds)


def tus_upload(base: str, token: str, path: Path, chunk: int, stop_after: int | None = None,
               url: str | None = None, **metadata: str) -> Any:
    """tuspy (sha1 checksums) from the start, or resuming the upload at ``url``; stops at ``stop_after``."""
    from tusclient import client as tus

    client = tus.TusClient(f"{base}/api/v1/uploads", headers={"Authorization": f"Bearer {token}"})
    with open(path, "rb") as stream:  # tuspy leaves a file it opened itself open
        uploader = client.uploader(file_stream=stream, url=url, chunk_size=chunk,
                                   metadata={"filename": path.name, **metadata}, upload_checksum=True)
        resumed_at = uploader.offset
        if stop_after is None:
            uploader.upload()
        else:
            while uploader.offset < stop_after:
                uploader.upload_chunk()
    uploader.resumed_at = resumed_at
    return uploader


def store_keys(fleet: Fleet, prefix: str) -> list[str]:
    import botocore.session

    s3 = fleet.s3
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=s3.endpoint, region_name=s3.region, aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key)
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=f"fleet/{prefix}")
        return [o["Key"] for page in pages for o in page.get("Contents", [])]
    finally:
        client.close()


def test_a_fleet_that_shares_no_disk(network: Network, tmp_path: Path) -> None:
    started = time.monotonic()
    fleet = Fleet(network)
    fleet.start_services()
    try:
        try:
            _run(fleet, tmp_path)
        except BaseException:
            # What each host said, for a failure seen only in CI (pytest prints captured output).
            for host in network.hosts.values():
                for log in sorted(host.data_dir.glob("*.log")):
                    print(f"===== {host.name}/{log.name}\n{log.read_text(errors='replace')[-4000:]}")
            raise
        # The roles stop on SIGTERM (within 20 s) while the store and Consul are still up.
        assert network.stop([n for n in network.hosts if n != "services"]) == []
    finally:
        network.stop([n for n in network.hosts if n != "services"])
        stop_seaweedfs(fleet.weed, fleet.s3)
    print(f"fleet test body: {time.monotonic() - started:.1f} s")


def _run(fleet: Fleet, tmp_path: Path) -> None:
    broker_a, broker_a_proc, broker_a_log = fleet.start_role("broker-a", "broker")
    broker_b, broker_b_proc, broker_b_log = fleet.start_role("broker-b", "broker")
    brokers = {broker_a.address: (broker_a, broker_a_proc, broker_a_log),
               broker_b.address: (broker_b, broker_b_proc, broker_b_log)}
    config = fleet.config(broker_a)
    leader = wait_until(lambda: consul_kv(fleet, lock_key(config)), timeout=60, what="a broker leader")
    farm, farm_proc, farm_log = fleet.start_role("farm", "farm")
    edge_a, edge_a_proc, edge_a_log = fleet.start_role("edge-a", "edge")
    edge_b, edge_b_proc, edge_b_log = fleet.start_role("edge-b", "edge")
    control, control_proc, control_log = fleet.start_role("control", "control")
    a, b = f"http://{edge_a.address}:{EDGE_PORT}", f"http://{edge_b.address}:{EDGE_PORT}"
    for proc, url, log in ((edge_a_proc, a, edge_a_log), (edge_b_proc, b, edge_b_log)):
        wait_healthy(proc, url + "/api/v1/health", log, timeout=90, what=f"{url} ready")
    wait_healthy(control_proc, f"http://{control.address}:{CONTROL_PORT}/api/v1/fleet", control_log, timeout=60,
                 what="control's fleet view")

    # Sign in on A; the token works on B too (one secret per fleet).
    token, address = sign_in(a, tmp_path)

    # 1. A tus upload to A, stopped half-way, resumed at B.
    clip = make_video(tmp_path / "clip.mp4", seconds=4.0, width=320, height=240, fps=25)
    size = clip.stat().st_size
    chunk = max(64 * 1024, size // 8)
    half = tus_upload(a, token, clip, chunk, stop_after=size // 2)
    assert 0 < half.offset < size, (half.offset, size)
    upload_id = half.url.rstrip("/").rsplit("/", 1)[1]
    resumed = tus_upload(b, token, clip, chunk, url=f"{b}/api/v1/uploads/{upload_id}")
    assert resumed.resumed_at == half.offset, (resumed.resumed_at, half.offset)  # B's HEAD sees A's bytes
    assert resumed.offset == size
    first = upload_id
    got = wait_ready(b, first, timeout=180)
    assert got["owner"].lower() == address.lower(), got
    assert store_keys(fleet, f"media/{first}/master.m3u8"), "the ladder is in the store"
    farm_media = list((farm.data_dir / "data").rglob("*.m4s"))
    assert farm_media == [], f"the farm kept media on its own disk: {farm_media[:3]}"

    # 2. Every file of HLS and DASH from both edges, identical; ffmpeg plays both from both.
    from_a, from_b = crawl(a, first), crawl(b, first)
    assert sorted(from_a) == sorted(from_b)
    assert any(k.endswith(".m4s") for k in from_a) and any("init" in k for k in from_a), sorted(from_a)
    for rel in from_a:
        assert hashlib.sha256(from_a[rel]).digest() == hashlib.sha256(from_b[rel]).digest(), rel
    for base in (a, b):
        play(f"{base}/videos/{first}/master.m3u8")
        play(f"{base}/videos/{first}/manifest.mpd")

    # HAProxy in front of both edges (the haproxy role's template): players through it must see
    # no failed request while the leader broker is SIGKILLed (3.) and edge A restarts (after it).
    lb_host = fleet.net.add_host("lb")
    lb_cfg = lb_host.data_dir / "haproxy.cfg"
    lb_cfg.write_text(haproxy_config(
        haproxy_chroot="", haproxy_user="", haproxy_log_target="stdout", haproxy_port=80,
        haproxy_admin_socket=str(lb_host.data_dir / "admin.sock"), haproxy_maxconn=2000,
        haproxy_edges=[{"name": name, "address": host.address, "port": EDGE_PORT}
                       for name, host in (("edge-a", edge_a), ("edge-b", edge_b))]))
    checked = subprocess.run(["haproxy", "-c", "-f", str(lb_cfg)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lb_proc, lb_log = lb_host.spawn("haproxy", ["haproxy", "-db", "-f", str(lb_cfg)])
    lb = f"http://{lb_host.address}:80"
    wait_healthy(lb_proc, lb + "/api/v1/health", lb_log, timeout=60, what="HAProxy in front of the edges")
    players = Players(lb, ["/api/v1/videos"] + [f"/videos/{first}/{rel}" for rel in sorted(from_a)],
                      n=2, pace_s=0.1).start()

    # 3. A longer upload; the leader broker is SIGKILLed while its job runs.
    # Large enough for whole S3 parts (5 MiB here): A stores a part and a tail, B folds the tail in.
    long_clip = make_video(tmp_path / "long.mp4", seconds=40.0, width=854, height=480, fps=30)
    long_size = long_clip.stat().st_size
    assert long_size > PART_SIZE + 2 * 1024 * 1024, long_size
    started_long = tus_upload(a, token, long_clip, 2 * 1024 * 1024, stop_after=PART_SIZE + 1024 * 1024,
                              visibility="private")
    second = started_long.url.rstrip("/").rsplit("/", 1)[1]
    finished_long = tus_upload(b, token, long_clip, 2 * 1024 * 1024, url=f"{b}/api/v1/uploads/{second}")
    assert finished_long.resumed_at == started_long.offset and finished_long.offset == long_size

    def running() -> bool:
        v = video(a, second, token)
        assert v is None or v["status"] not in ("failed", "ready"), ("finished before the kill", v)
        return v is not None and v["status"] == "transcoding"

    wait_until(running, timeout=120, interval=0.2, what="the second job running")
    old_host, old_proc, _ = next(v for k, v in brokers.items() if k in leader)
    standby_host, _, standby_log = next(v for k, v in brokers.items() if k not in leader)
    old_proc.kill()  # SIGKILL: no deregistration, no lock release
    old_proc.wait(10)
    wait_until(lambda: standby_host.address in consul_kv(fleet, lock_key(config)), timeout=60,
               what="the standby broker taking the leader lock")
    wait_ready(a, second, timeout=300, token=token)
    assert "took the leader lock" in standby_log.read_text()

    # Exactly once: the journal (Redis) has one done for each job, the second in one attempt.
    import asyncio

    from streamgate.farm.journal_redis import RedisJournal

    async def journal_facts() -> tuple[Any, Any, Any]:
        journal = RedisJournal.from_url(f"redis://{fleet.services.address}:6379/0", journal_prefix(config))
        try:
            return await journal.totals(), await journal.get(first), await journal.get(second)
        finally:
            await journal.close()

    totals, rec1, rec2 = asyncio.run(journal_facts())
    assert (totals.done, totals.failed) == (2, 0), totals
    assert rec1 is not None and rec1.state == "done", rec1
    assert rec2 is not None and rec2.state == "done" and rec2.attempts == 1, rec2
    # systemctl restart, as the edge sees it: SIGTERM, then the same edge again.
    edge_a_proc.terminate()
    assert edge_a_proc.wait(30) == 0, edge_a_log.read_text()[-3000:]
    edge_a_proc, edge_a_log = edge_a.spawn("edge", [sys.executable, "-m", "streamgate", "--config",
                                                    str(edge_a.data_dir / "config.yaml"), "edge"], env=clean_env())
    wait_healthy(edge_a_proc, a + "/api/v1/health", edge_a_log, timeout=90, what=f"{a} ready again")
    wait_until(lambda: requests.get(lb + "/health", timeout=5).headers.get("X-StreamGate-Edge") == "edge-a",
               timeout=30, interval=0.2, what="HAProxy sending to edge A again")
    players.stop()
    assert players.failures == [], players.failures[:10]
    assert players.requests > 50, players.requests

    # The second video is private: no player gets it bare; a URL signed on A plays on B.
    for base in (a, b):
        assert requests.get(f"{base}/videos/{second}/master.m3u8", timeout=10).status_code == 401
    r = requests.post(f"{a}/api/v1/videos/{second}/playback-url", headers={"Authorization": f"Bearer {token}"},
                      timeout=10)
    assert r.status_code == 200, (r.status_code, r.text)
    signed_on_a = r.json()
    for url in (signed_on_a["hls_url"], signed_on_a["dash_url"]):
        play(url.replace(a, b))

    # 4. A's token on B: a signed URL for the first video, then B deletes it; A sees it gone.
    auth = {"Authorization": f"Bearer {token}"}
    r = requests.post(f"{b}/api/v1/videos/{first}/playback-url", headers=auth, timeout=10)
    assert r.status_code == 200, (r.status_code, r.text)
    signed = r.json()
    assert requests.get(signed["hls_url"], timeout=10).status_code == 200
    r = requests.delete(f"{b}/api/v1/videos/{first}", headers=auth, timeout=30)
    assert r.status_code in (200, 204), (r.status_code, r.text)
    assert video(a, first) is None
    # Gone for players too, on both edges, whatever tier of either edge held its files.
    segment = next(k for k in from_a if k.endswith(".m4s"))
    gone = [(base, rel) for base in (a, b) for rel in ("master.m3u8", "manifest.mpd", segment)]

    def all_gone() -> bool:
        # An edge's access verdicts live up to 2 s (edge/access/playback.py CACHE_TTL_S).
        return all(requests.get(f"{base}/videos/{first}/{rel}", timeout=10).status_code == 404
                   for base, rel in gone)

    wait_until(all_gone, timeout=15, interval=0.25, what="the deleted video gone from both edges")
    assert requests.get(signed["hls_url"], timeout=10).status_code == 404
    assert store_keys(fleet, f"media/{first}/") == [] and store_keys(fleet, f"sources/{first}/") == []
    assert requests.delete(f"{a}/api/v1/videos/{second}", headers={"Authorization": "Bearer forged.x"},
                           timeout=10).status_code == 401

    # Control's fleet view sees both edges, the live broker and the farm.
    view = requests.get(f"http://{control.address}:{CONTROL_PORT}/api/v1/fleet", timeout=10).json()
    roles = sorted((i["role"], i["status"]) for i in view["instances"])
    assert roles.count(("edge", "passing")) == 2, roles
    assert ("farm", "passing") in roles, roles
    assert view["broker"]["up"], view["broker"]
    for proc, log in ((farm_proc, farm_log), (edge_a_proc, edge_a_log), (edge_b_proc, edge_b_log)):
        assert proc.poll() is None, log.read_text()[-3000:]
