"""An operator's day on a fleet of systemd hosts, under locust load through HAProxy (issue 13).

Six nspawn hosts boot systemd as PID 1 and are reached over SSH: ``lb`` (HAProxy, the haproxy
role), ``b1``/``b2`` (brokers, failing over through Consul), ``e1``/``e2`` (edges), ``f1`` (the
farm and the control plane). The controller runs what a fleet shares: a real redis-server, a real
SeaweedFS (the object store every host keeps sources and media in) and the Consul stand-in (no
registry ships a Consul binary; the consul role installs its files and runs no agent).

``site.yml`` installs release 0.1.0 from a wheel this test builds; clips are seeded through the
load balancer; then locust (players at playback pace, binge viewers, uploaders) loads the fleet
through HAProxy while the operator, step by step:

1. rolls 0.1.1 over every role with ``rolling-update.yml`` (brokers one by one, then a canary
   edge, then the rest);
2. SIGKILLs the leader broker (the standby takes the lock, systemd restarts the killed one);
3. SIGKILLs the farm while it transcodes (systemd restarts it, the broker gives the job again);
4. restarts an edge with ``systemctl restart`` (HAProxy retries what it refused elsewhere);
5. rolls a bad release (0.1.2: its edge cannot serve a segment): it stops at the canary edge,
   which stays drained, while the other edge, the farm and the control plane keep 0.1.1;
6. rolls 0.1.1 back over the fleet.

It ends with zero failed player requests, every upload the fleet accepted ready, every job done
exactly once, and prints the table docs/deployment.md shows. ``make fleet-test`` runs it (root).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import requests
import yaml
from consul_standin import ConsulStandin
from release import DEPS_IN_HOST, build_wheel, deps_farm, site_packages
from storage_support import start_seaweedfs, stop_seaweedfs
from support import wait_until
from test_fleet_storage import sign_in, tus_upload, wait_ready

from streamgate.common.config import config_from_tree
from streamgate.common.synth import make_video
from streamgate.farm.failover import journal_prefix
from streamgate.farm.journal import JobRecord

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.fleet, pytest.mark.timeout(3600)]

# Inventory order is rollout order within a play: e1 is the canary of the second play.
GROUPS: dict[str, list[str]] = {"b1": ["broker"], "b2": ["broker"], "e1": ["edge"], "e2": ["edge"],
                                "f1": ["farm", "control"], "lb1": ["lb"]}
STREAMGATE_HOSTS = [h for h, groups in GROUPS.items() if groups != ["lb"]]
EDGE_PORT = 8080
LB_PORT = 80
REDIS_PORT = 6390
USERS = 10  # 6 players, 2 binge viewers, 1-2 uploaders (the locustfile's weights)
SEGMENT_S = 2
STEADY_S = 20.0  # load alone before the first step and between steps: the baseline rows


# ---------------------------------------------------------------------------------------- helpers
class Steps:
    """The table: each step's window, and the jobs in flight sampled while it ran."""

    def __init__(self, journal_active: Callable[[], int]) -> None:
        self.rows: list[dict[str, Any]] = []
        self._active = journal_active

    def run(self, name: str, action: Callable[[], Any]) -> Any:
        peak, stop = [self._active()], threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                peak.append(self._active())

        sampler = threading.Thread(target=sample, daemon=True)
        started = time.time()
        sampler.start()
        try:
            return action()
        finally:
            stop.set()
            sampler.join(5)
            self.rows.append({"step": name, "start": started, "end": time.time(), "jobs": max(peak)})

    def steady(self, seconds: float) -> None:
        """A window of load alone: the action is the passing of time (a measured window, not a wait)."""
        self.run("steady load", lambda: time.sleep(seconds))


def catalog_statuses(base: str, token: str) -> dict[str, str]:
    """Every video of the token's wallet and its status, from the catalog's pages (following ``next``)."""
    statuses: dict[str, str] = {}
    url: str | None = f"{base}/api/v1/videos?limit=100&mine=1"
    while url:
        r = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        page = r.json()
        statuses.update({v["id"]: v["status"] for v in page["videos"]})
        url = page.get("next") or None
        if url and url.startswith("/"):
            url = base + url
    return statuses


def read_requests(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_upload(request: dict[str, Any]) -> bool:
    return "(tus)" in request["name"]


def table(steps: Steps, requests_log: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    rows, lines = [], []
    header = ("step", "duration", "player requests", "player failures", "upload requests",
              "upload failures", "jobs in flight (max)")
    for row in steps.rows:
        inside = [r for r in requests_log if row["start"] <= r["t"] < row["end"]]
        players = [r for r in inside if not is_upload(r)]
        uploads = [r for r in inside if is_upload(r)]
        rows.append({**row, "duration": row["end"] - row["start"], "player_requests": len(players),
                     "player_failures": sum(not r["ok"] for r in players), "upload_requests": len(uploads),
                     "upload_failures": sum(not r["ok"] for r in uploads)})
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for r in rows:
        lines.append(f"| {r['step']} | {r['duration']:.0f} s | {r['player_requests']} | {r['player_failures']} "
                     f"| {r['upload_requests']} | {r['upload_failures']} | {r['jobs']} |")
    players = [r for r in requests_log if not is_upload(r)]
    uploads = [r for r in requests_log if is_upload(r)]
    lines.append(f"| **whole run** | {requests_log[-1]['t'] - requests_log[0]['t']:.0f} s | {len(players)} "
                 f"| {sum(not r['ok'] for r in players)} | {len(uploads)} | {sum(not r['ok'] for r in uploads)} "
                 f"| {max(r['jobs'] for r in steps.rows)} |")
    return "\n".join(lines), rows


@pytest.fixture
def redis_on_bridge(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(address: str) -> str:
        proc = subprocess.Popen(["redis-server", "--bind", address, "--port", str(REDIS_PORT), "--save", "",
                                 "--appendonly", "no", "--protected-mode", "no", "--dir", str(tmp_path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        client = redis.Redis(host=address, port=REDIS_PORT, socket_timeout=2)

        def pong() -> bool:
            assert proc.poll() is None, "redis-server exited"
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False
        wait_until(pong, timeout=30, what="redis-server on the bridge")
        client.close()
        return f"redis://{address}:{REDIS_PORT}/0"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(30)


def playbook(workdir: Path, inventory: Path, extra: dict[str, Any], name: str,
             tag: str) -> tuple[subprocess.CompletedProcess[str], float]:
    vars_file = workdir / f"{tag}.vars.json"
    vars_file.write_text(json.dumps(extra))
    env = {"PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(workdir),
           "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp")}
    started = time.monotonic()
    result = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), "-e", f"@{vars_file}", name],
                            cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=1800)
    (workdir / f"{tag}.log").write_text(result.stdout + result.stderr)
    return result, time.monotonic() - started


def bad_edge(src: Path) -> None:
    """Release 0.1.2's defect: its edge answers no segment (every .m4s is 'not a media file')."""
    names = src / "edge/playback/names.py"
    text = names.read_text()
    anchor = '    if extension(parts[-1]) not in CONTENT_TYPES:\n'
    assert anchor in text, "edge/playback/names.py changed: move the bad release's defect"
    names.write_text(text.replace(anchor, '    if parts[-1].endswith(".m4s"):\n'
                                          '        raise BadMediaPath("the bad release serves no segment")\n'
                                  + anchor, 1))


def unit_pid(fleet: Any, host: str, unit: str) -> int:
    out = fleet.ssh(host, f"systemctl show -p MainPID --value {unit}").stdout.strip()
    return int(out or 0)


def installed_version(fleet: Any, host: str) -> str:
    out = fleet.ssh(host, "/opt/streamgate/venv/bin/python -c "
                          "'import importlib.metadata as m; print(m.version(\"streamgate\"))'")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def edge_version(address: str) -> str:
    return requests.get(f"http://{address}:{EDGE_PORT}/health", timeout=5).json()["version"]


def lb_server_states(fleet: Any) -> dict[str, str]:
    """HAProxy's view of each edge server: its admin state and operational state (runtime API)."""
    script = ("import socket; s=socket.socket(socket.AF_UNIX); s.connect('/run/haproxy/admin.sock'); "
              "s.sendall(b'show servers state streamgate_edges\\n'); "
              "print(b''.join(iter(lambda: s.recv(65536), b'')).decode())")
    out = fleet.ssh("lb1", f'python3 -c "{script}"')
    assert out.returncode == 0, out.stderr
    states = {}
    for line in out.stdout.splitlines():
        fields = line.split()
        # be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ...
        if len(fields) > 6 and fields[1] == "streamgate_edges":
            states[fields[3]] = f"op={fields[5]} admin={fields[6]}"
    return states


def consul_serving(consul: ConsulStandin, service: str) -> list[tuple[str, str]]:
    r = requests.get(f"{consul.address}/v1/agent/health/service/name/{service}", timeout=5)
    return [(entry["Service"]["Meta"].get("node", ""), entry["AggregatedStatus"]) for entry in r.json()]


def journals(fleet: Any) -> str:
    return "".join(f"\n--- {host} ---\n" + fleet.ssh(
        host, "systemctl --no-pager status 'streamgate*' | tail -n 30; "
              "journalctl --no-pager -n 50 -u 'streamgate*'").stdout for host in STREAMGATE_HOSTS)


# ------------------------------------------------------------------------------------- the test
def test_operator_day_under_load(make_fleet: Callable[..., Any], tmp_path: Path,
                                 redis_on_bridge: Callable[[str], str]) -> None:
    wheels = tmp_path / "wheels"
    v1 = build_wheel("0.1.0", wheels, tmp_path)
    v2 = build_wheel("0.1.1", wheels, tmp_path)
    v3 = build_wheel("0.1.2", wheels, tmp_path, patch=bad_edge)
    farm = deps_farm(tmp_path / "deps-farm")
    fleet = make_fleet(list(GROUPS), name="sgo", subnet="10.213.3",
                       binds=[(site_packages(), f"{DEPS_IN_HOST}/all"), (farm, f"{DEPS_IN_HOST}/site"),
                              (wheels, "/opt/releases")])
    ctl = fleet.controller_address
    addr = {h: fleet.host(h).address for h in GROUPS}
    lb = f"http://{addr['lb1']}:{LB_PORT}"
    consul = ConsulStandin(host=ctl).start()
    weed = s3 = None
    locust: subprocess.Popen[bytes] | None = None
    try:
        redis_url = redis_on_bridge(ctl)
        weed, s3 = start_seaweedfs(tmp_path / "weed", ip=ctl, timeout=120)
        for host in STREAMGATE_HOSTS:
            # The venv the role installs into, its dependencies from the controller (see release.py).
            made = fleet.ssh(host, "python3 -m venv /opt/streamgate/venv && "
                                   f"echo {DEPS_IN_HOST}/site > $(ls -d /opt/streamgate/venv/lib/python3*/site-packages)/streamgate-deps.pth")
            assert made.returncode == 0, made.stderr
        stub = tmp_path / "consul-binary"
        stub.write_text("#!/bin/sh\n# no registry ships consul: the stand-in on the controller is the agent\necho consul\n")
        stub.chmod(0o755)

        inventory = tmp_path / "inventory" / "hosts.yml"
        inventory.parent.mkdir()
        children: dict[str, dict[str, dict[str, None]]] = {}
        for host, groups in GROUPS.items():
            for group in groups:
                children.setdefault(group, {"hosts": {}})["hosts"][host] = None
        inventory.write_text(yaml.safe_dump({"all": {
            "hosts": {h: {"ansible_ssh_common_args": f"-F {fleet.ssh_config}", "ansible_user": "root",
                          "ansible_python_interpreter": "/usr/bin/python3"} for h in GROUPS},
            "children": children}}, sort_keys=False))
        base: dict[str, Any] = {
            "streamgate_common_pip_spec": f"/opt/releases/{v1.name}", "streamgate_common_version": "0.1.0",
            "streamgate_common_pip_extra_args": "--no-deps --no-index",
            "streamgate_common_install_system_packages": False,
            "streamgate_common_consul_address": consul.address, "streamgate_common_redis_url": redis_url,
            "streamgate_common_broker_host": addr["b1"],
            # The origin players and wallets use: the load balancer's.
            "streamgate_common_public_url": lb,
            # HAProxy's address: its X-Forwarded-For names the player (rate limits per player).
            "streamgate_common_trusted_proxies": [addr["lb1"]],
            "streamgate_common_s3_endpoint": s3.endpoint, "streamgate_common_s3_bucket": s3.bucket,
            "streamgate_common_s3_region": s3.region, "streamgate_common_s3_access_key_id": s3.access_key_id,
            "streamgate_common_s3_secret_access_key": s3.secret_access_key,
            "streamgate_common_s3_create_bucket": False,
            "streamgate_common_config": {
                "server": {"workers": 1, "shutdown_timeout": "5s"},
                "storage": {"min_free_space": 0},
                "registry": {"check_interval": "1s", "ttl": "3s", "watch_wait": "5s"},
                "broker": {"heartbeat_interval": "250ms", "heartbeat_liveness": 8, "stall_timeout": "60s",
                           "max_retries": 2},
                "control": {"broker_lock_delay": "1s", "refresh_interval": "1s"},
                "uploads": {"resubmit_interval": "1s"},
                "transcoder": {"ladder": [240, 144], "preset": "ultrafast", "segment_duration": f"{SEGMENT_S}s",
                               "worker_pool_size": 1, "drain_timeout": "5s",
                               "scaling_policy": {"min_workers": 1, "max_workers": 1}},
            },
            "consul_binary_src": str(stub), "consul_manage_service": False,
            "streamgate_edge_ports": [EDGE_PORT],
            "streamgate_rolling_drain_seconds": 3,
            "streamgate_rolling_health_delay": 1,
            "streamgate_rolling_health_retries": 60,
            "haproxy_install_package": False, "haproxy_port": LB_PORT,
            # maxconn needs 2 descriptors per connection: the hosts inherit this machine's hard
            # limit of open files (19999 here), below what the default 20000 needs.
            "haproxy_maxconn": 4000,
            "haproxy_edges": [{"name": f"{h}-{EDGE_PORT}", "address": addr[h], "port": EDGE_PORT}
                              for h in GROUPS if "edge" in GROUPS[h]],
        }
        site, site_s = playbook(tmp_path, inventory, base, "site.yml", "site")
        assert site.returncode == 0, site.stdout[-5000:] + site.stderr[-2000:] + journals(fleet)
        wait_until(lambda: requests.get(f"{lb}/api/v1/health", timeout=5).status_code == 200, timeout=120,
                   what="the fleet ready through HAProxy")

        # Seed the catalog through the load balancer, as a user would; the first is the canary.
        token, _ = sign_in(lb, tmp_path)
        seeded = []
        for i in range(3):
            clip = make_video(tmp_path / f"seed{i}.mp4", seconds=6.0 + 2 * i, width=320, height=240, fps=24)
            seeded.append(tus_upload(lb, token, clip, 256 * 1024).url.rstrip("/").rsplit("/", 1)[1])
        for video_id in seeded:
            wait_ready(lb, video_id, timeout=300, token=token)
        canary = seeded[0]

        config = config_from_tree({})
        active_key = f"{journal_prefix(config)}:active"
        journal = redis.Redis(host=ctl, port=REDIS_PORT, socket_timeout=5)
        steps = Steps(lambda: int(journal.zcard(active_key)))

        request_log, uploads_log = tmp_path / "requests.jsonl", tmp_path / "uploads.txt"
        locust_log = open(tmp_path / "locust.log", "wb")  # noqa: SIM115 - handed to the child
        locust = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(REPO / "loadtests/locustfile.py"), "--headless",
             "-u", str(USERS), "-r", "5", "-t", "50m", "--host", lb, "--only-summary",
             "--csv", str(tmp_path / "locust")],
            env={**os.environ, "LOADTEST_TOKEN": token, "LOADTEST_REQUEST_LOG": str(request_log),
                 "LOADTEST_UPLOADS": str(uploads_log), "LOADTEST_SEED": "13",
                 "LOADTEST_BEHAVIOUR": str(tmp_path / "behaviour.json")},
            stdout=locust_log, stderr=subprocess.STDOUT, cwd=tmp_path)
        locust_log.close()  # the child has its own descriptor
        wait_until(lambda: len(read_requests(request_log)) > 50, timeout=120, what="locust loading the fleet")
        steps.steady(STEADY_S)

        rolling = {**base, "streamgate_common_pip_spec": f"/opt/releases/{v2.name}",
                   "streamgate_common_version": "0.1.1", "streamgate_rolling_canary_video": canary}

        # 1. A rolling update of every role.
        rolled, _ = steps.run("rolling update 0.1.0 → 0.1.1, every role",
                              lambda: playbook(tmp_path, inventory, rolling, "rolling-update.yml", "roll-0.1.1"))
        assert rolled.returncode == 0, rolled.stdout[-5000:] + rolled.stderr[-2000:] + journals(fleet)
        for host in STREAMGATE_HOSTS:
            assert installed_version(fleet, host) == "0.1.1", host
        assert {edge_version(addr[h]) for h in ("e1", "e2")} == {"0.1.1"}
        assert "SKIPPED the edge playback gate" not in rolled.stdout
        steps.steady(STEADY_S)

        # 2. SIGKILL of the leader broker.
        epoch_key = f"{journal_prefix(config)}:epoch"

        def kill_leader() -> str:
            leader = next(node for node, status in consul_serving(consul, "streamgate-broker")
                          if status == "passing")
            host = next(h for h in ("b1", "b2") if leader == h)
            old, epoch = unit_pid(fleet, host, "streamgate-broker.service"), int(journal.get(epoch_key) or 0)
            killed = fleet.ssh(host, "systemctl kill --signal=SIGKILL streamgate-broker.service")
            assert killed.returncode == 0, killed.stderr

            def failed_over() -> bool:
                # A new leadership epoch (whichever broker won it: the standby, or the killed
                # one restarted by systemd), one broker serving, the killed one running again.
                passing = [n for n, s in consul_serving(consul, "streamgate-broker") if s == "passing"]
                return (int(journal.get(epoch_key) or 0) > epoch and len(passing) == 1
                        and unit_pid(fleet, host, "streamgate-broker.service") not in (0, old))
            try:
                wait_until(failed_over, timeout=120, interval=0.5, what=f"a new broker leader after {host}'s kill")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {consul_serving(consul, 'streamgate-broker')}" + journals(fleet)) from None
            return host
        steps.run("SIGKILL of the leader broker", kill_leader)
        steps.steady(STEADY_S)

        # 3. SIGKILL of the farm while it transcodes a job.
        long_clip = make_video(tmp_path / "long.mp4", seconds=40.0, width=320, height=240, fps=24)
        long_id = tus_upload(lb, token, long_clip, 1024 * 1024).url.rstrip("/").rsplit("/", 1)[1]

        def kill_farm() -> None:
            def transcoding() -> bool:
                v = requests.get(f"{lb}/api/v1/videos/{long_id}", headers={"Authorization": f"Bearer {token}"},
                                 timeout=10).json()
                assert v["status"] != "ready", "the long job finished before the farm was killed"
                return v["status"] == "transcoding" and (v.get("progress") or 0) > 0
            wait_until(transcoding, timeout=300, interval=0.2, what="the long job transcoding")
            killed = fleet.ssh("f1", "systemctl kill --signal=SIGKILL streamgate-farm.service")
            assert killed.returncode == 0, killed.stderr
            wait_ready(lb, long_id, timeout=600, token=token)
        steps.run("SIGKILL of the farm mid-job", kill_farm)
        steps.steady(STEADY_S)

        # 4. systemctl restart of an edge HAProxy still sends requests to.
        def restart_edge() -> None:
            old = unit_pid(fleet, "e2", f"streamgate-edge@{EDGE_PORT}.service")
            done = fleet.ssh("e2", f"systemctl restart streamgate-edge@{EDGE_PORT}.service", timeout=120)
            assert done.returncode == 0, done.stderr
            assert unit_pid(fleet, "e2", f"streamgate-edge@{EDGE_PORT}.service") not in (0, old)
            wait_until(lambda: lb_server_states(fleet).get(f"e2-{EDGE_PORT}", "").startswith("op=2"),
                       timeout=60, what="HAProxy sending to e2 again")
        steps.run("systemctl restart of an edge", restart_edge)
        steps.steady(STEADY_S)

        # 5. A bad release stops at the canary.
        bad = {**rolling, "streamgate_common_pip_spec": f"/opt/releases/{v3.name}",
               "streamgate_common_version": "0.1.2"}
        stopped, _ = steps.run("bad release 0.1.2: stops at the canary edge",
                               lambda: playbook(tmp_path, inventory, bad, "rolling-update.yml", "roll-0.1.2"))
        assert stopped.returncode != 0, stopped.stdout[-3000:]
        recap = stopped.stdout[stopped.stdout.rfind("PLAY RECAP"):]
        assert "e1" in recap and "failed=1" in recap.split("e1", 1)[1].splitlines()[0], recap
        assert "Fetch the rendition's init section and first segment" in stopped.stdout
        # Brokers roll first (they passed their gates); past the canary nothing changed.
        assert [installed_version(fleet, h) for h in ("b1", "b2", "e1", "e2", "f1")] == \
            ["0.1.2", "0.1.2", "0.1.2", "0.1.1", "0.1.1"]
        assert edge_version(addr["e2"]) == "0.1.1"
        states = lb_server_states(fleet)
        assert "admin=8" in states[f"e1-{EDGE_PORT}"] or "admin=4" in states[f"e1-{EDGE_PORT}"], states
        steps.steady(STEADY_S)

        # 6. The operator rolls the good release back over the fleet.
        back, _ = steps.run("roll back to 0.1.1",
                            lambda: playbook(tmp_path, inventory, rolling, "rolling-update.yml", "rollback"))
        assert back.returncode == 0, back.stdout[-5000:] + back.stderr[-2000:] + journals(fleet)
        assert [installed_version(fleet, h) for h in STREAMGATE_HOSTS] == ["0.1.1"] * len(STREAMGATE_HOSTS)
        steps.steady(STEADY_S)

        locust.send_signal(signal.SIGTERM)
        locust.wait(120)
        locust_out = (tmp_path / "locust.log").read_text()
        log = read_requests(request_log)
        text, rows = table(steps, log)
        print("\n" + text)
        print(f"\nsite.yml {site_s:.0f} s over {len(GROUPS)} hosts; behaviour: "
              + (tmp_path / "behaviour.json").read_text())
        (REPO / "build").mkdir(exist_ok=True)
        (REPO / "build/fleet-operations.md").write_text(text + "\n")

        failed_players = [r for r in log if not is_upload(r) and not r["ok"]]
        assert failed_players == [], failed_players[:20]
        assert sum(r["player_requests"] for r in rows) > 1000, rows
        # Every upload the fleet accepted became a ready video; every job done exactly once.
        accepted = [line for line in uploads_log.read_text().split() if line] if uploads_log.exists() else []
        assert len(accepted) >= 5, (len(accepted), locust_out[-3000:])
        ids = {*accepted, *seeded, long_id}

        def all_ready() -> bool:
            listed = catalog_statuses(lb, token)
            failed = {i: listed[i] for i in ids if listed.get(i) == "failed"}
            assert failed == {}, failed
            return all(listed.get(i) == "ready" for i in ids)
        # A few catalog pages a poll, not a request per video: the API's rate limit holds for us too.
        wait_until(all_ready, timeout=300, interval=2.0, what="every accepted upload ready")
        states_key = f"{journal_prefix(config)}:states"
        job_states = {k.decode(): v.decode() for k, v in journal.hgetall(states_key).items()}
        totals = {k.decode(): v.decode() for k, v in journal.hgetall(f"{journal_prefix(config)}:totals").items()}
        assert {job_states.get(i) for i in ids} == {"done"}, {i: job_states.get(i) for i in ids}
        assert int(totals.get("done", 0)) == sum(s == "done" for s in job_states.values()), totals
        assert int(totals.get("failed", 0)) == 0, totals
        assert journal.zcard(active_key) == 0
        # The farm was killed mid-job: the long job ran twice and was done once.
        record = msgspec.msgpack.decode(journal.hget(f"{journal_prefix(config)}:jobs", long_id), type=JobRecord)
        assert record.state == "done" and record.attempts >= 2, record
    finally:
        if locust is not None and locust.poll() is None:
            locust.kill()
            locust.wait(30)
        if weed is not None:
            stop_seaweedfs(weed, s3)
        consul.stop()
