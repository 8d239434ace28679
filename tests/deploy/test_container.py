"""The OCI image (Dockerfile) built and run here: upload a clip over tus, play every segment.

No image registry is reachable, so the base is built from Debian's packages (mmdebstrap ->
podman import) and the Python dependencies come from a wheelhouse downloaded from PyPI; both are
cached outside the repository (CACHE) because they take minutes. Debian's podman runs with runc:
crun refuses this kernel's hybrid cgroups. The containers.conf and storage.conf are the test's
own, in temporary directories, so the host's podman state is never touched.

Root only (podman as root, mmdebstrap in root mode); behind the `container` marker
(`make test-container`) because a cold run takes minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import REPO
from support import wait_until

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

CACHE = Path("/var/cache/streamgate-test")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = "python3,python3-venv,tini,ca-certificates"
TOOLS = ("podman", "runc", "mmdebstrap")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: podman and mmdebstrap run in root mode here"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install podman runc mmdebstrap"
    return None


if (_reason := _skip_reason()) is not None:
    pytest.skip(_reason, allow_module_level=True)


def run(*argv: str, env: dict[str, str] | None = None, timeout: float = 600,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:4])} ... exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def base_tarball() -> Path:
    """A Debian rootfs with Python 3.11, venv and tini: built once, then reused from CACHE."""
    key = hashlib.sha256(f"{SUITE} {BASE_PACKAGES}".encode()).hexdigest()[:8]
    tarball = CACHE / f"base-{SUITE}-{key}.tar"
    if not tarball.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        run("mmdebstrap", "--variant=apt", "--format=tar", f"--include={BASE_PACKAGES}", SUITE,
            str(partial), MIRROR, timeout=1200)
        partial.rename(tarball)
    return tarball


def wheelhouse() -> Path:
    """Wheels of every dependency (and the build backend) for an offline image build."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    # Debian's python3 is 3.11.2: redis wants async-timeout below 3.11.3, this host's pip would skip it.
    requirements = [*project["project"]["dependencies"], *project["build-system"]["requires"],
                    "async-timeout>=4.0.3"]
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12]
    house = CACHE / f"wheels-{key}"
    if not house.exists():
        partial = CACHE / f"wheels-{key}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        run(sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", str(partial),
            *requirements, timeout=1200)
        partial.rename(house)
    return house


class Podman:
    """Debian's podman with this test's own configuration and storage."""

    def __init__(self, root: Path) -> None:
        self.root = root
        conf, storage = root / "containers.conf", root / "storage.conf"
        # Below the host's hard limits: runc may not raise them (podman's defaults for root do).
        nofile = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        nproc = min(4096, resource.getrlimit(resource.RLIMIT_NPROC)[1])
        conf.write_text(f"""\
[containers]
default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{root}/events.log"
tmp_dir = "{root}/libpod-tmp"
""")
        storage.write_text(f"""\
[storage]
driver = "overlay"
graphroot = "{root}/graph"
runroot = "{root}/run"
""")
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage),
                    "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"), "TMPDIR": str(root / "tmp")}
        (root / "registries.conf").write_text("unqualified-search-registries = []\n")
        (root / "tmp").mkdir()

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("podman", *args, env=self.env, timeout=timeout, check=check)

    def close(self) -> None:
        self("rm", "--all", "--force", "--time", "0", check=False, timeout=120)
        self("system", "reset", "--force", check=False, timeout=300)
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            target = line.split()[1]
            if target.startswith(str(self.root)):
                subprocess.run(["umount", "-l", target], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


class Built:
    def __init__(self, podman: Podman, image: str, seconds: dict[str, float]) -> None:
        self.podman = podman
        self.image = image
        self.seconds = seconds


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    podman = Podman(tmp_path_factory.mktemp("podman"))
    seconds: dict[str, float] = {}
    try:
        started = time.monotonic()
        tarball = base_tarball()
        house = wheelhouse()
        seconds["base+wheels"] = time.monotonic() - started
        base = f"localhost/streamgate-test-base:{tarball.stem.rsplit('-', 1)[-1]}"
        podman("import", str(tarball), base)
        # The build context: what `docker build .` sees in a checkout, plus the wheelhouse.
        context = tmp_path_factory.mktemp("context")
        for name in ("edge", "farm", "control", "common", "streamgate"):
            shutil.copytree(REPO / name, context / name, ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md", "Dockerfile", ".dockerignore"):
            shutil.copy2(REPO / name, context / name)
        shutil.copytree(house, context / "wheelhouse")
        started = time.monotonic()
        podman("build", "--format", "docker", "--pull=never", "--network", "none",
               "--build-arg", f"BASE={base}", "--build-arg", "WHEELHOUSE=wheelhouse",
               "--tag", "localhost/streamgate:test", str(context), timeout=1200)
        seconds["build"] = time.monotonic() - started
        yield Built(podman, "localhost/streamgate:test", seconds)
    finally:
        podman.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def test_the_image_is_non_root_with_a_healthcheck_and_tini(built: Built) -> None:
    inspect = json.loads(built.podman("image", "inspect", built.image).stdout)[0]
    config = inspect["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"][0] == "/usr/local/sbin/tini"
    assert config["Cmd"] == ["run"]
    assert config["Env"] and any(e.startswith("PROMETHEUS_MULTIPROC_DIR=") for e in config["Env"])
    # podman reports a docker-format image's HEALTHCHECK at the top level of its inspect output.
    healthcheck = inspect.get("Healthcheck") or config.get("Healthcheck") or {}
    assert "/health" in " ".join(healthcheck.get("Test", [])), inspect.keys()
    # The command picks the verb: here `config check`, with the seed's spelling through its env names.
    checked = built.podman("run", "--rm", "--network", "none", "--env", "DEPLOYMENT_MODE=monolith",
                           "--env", "SERVICE_NAME=api-gateway", built.image, "config", "check")
    assert "mode: single" in checked.stdout and "service_name: api-gateway" in checked.stdout
    assert "data_dir: /var/lib/streamgate" in checked.stdout and "required: true" in checked.stdout


def test_the_image_serves_an_upload_and_plays_it(built: Built, video_factory, tmp_path: Path) -> None:
    from tusclient import client

    port, control = free_port(), free_port()
    name = f"streamgate-test-{port}"
    podman = built.podman
    # No systemd here to time the HEALTHCHECK: the timer is off, `podman healthcheck run` runs it.
    podman("run", "--detach", "--name", name, "--network", "host", "--shm-size", "256m",
           "--health-interval", "disable",
           "--env", "AUTH_REQUIRED=false", "--env", f"SERVER_PORT={port}",
           "--env", f"STREAMGATE__SERVER__CONTROL_PORT={control}", "--env", "STREAMGATE__SERVER__WORKERS=1",
           "--env", "TRANSCODER_WORKERS=1", "--env", "STREAMGATE__TRANSCODER__SCALING_POLICY__MIN_WORKERS=1",
           "--env", "STREAMGATE__TRANSCODER__LADDER=[240]", built.image, "run")
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            state = json.loads(podman("inspect", name).stdout)[0]["State"]
            assert state["Status"] == "running", podman("logs", name, check=False).stdout[-3000:]
            try:
                return get(base + "/health", 2)[0] == 200
            except OSError:
                return False

        wait_until(healthy, timeout=120, interval=0.5, what="the container's /health")
        assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
        assert podman("healthcheck", "run", name, check=False).returncode == 0
        # Upload with a real tus client, wait for the farm inside the container, play every segment.
        clip = video_factory("container.mp4", seconds=4.0, width=320, height=240)
        with open(clip, "rb") as stream:
            uploader = client.TusClient(base + "/api/v1/uploads").uploader(
                file_stream=stream, chunk_size=256 * 1024, metadata={"filename": clip.name, "title": "boxed"})
            uploader.upload()
        video_id = uploader.url.rstrip("/").rsplit("/", 1)[-1]

        def ready() -> dict[str, object] | None:
            video = json.loads(get(f"{base}/api/v1/videos/{video_id}")[1])
            assert video["status"] != "failed", video
            return video if video["status"] == "ready" else None

        video = wait_until(ready, timeout=300, interval=1, what="the video to be ready")
        master = get(base + str(video["hls_url"]).removeprefix(base))[1].decode()
        playlists = [line for line in master.splitlines() if line and not line.startswith("#")]
        playlists += [part.split('"')[1] for part in master.split("URI=")[1:]]  # EXT-X-MEDIA audio
        assert len(playlists) >= 2, master
        fetched = 0
        for rel in playlists:
            playlist_url = f"{base}/videos/{video_id}/{rel}"
            media = get(playlist_url)[1].decode()
            folder = playlist_url.rsplit("/", 1)[0]
            uris = [line for line in media.splitlines() if line and not line.startswith("#")]
            uris += [part.split('"')[1] for part in media.split("URI=")[1:]]  # the EXT-X-MAP init
            for uri in uris:
                status, body = get(f"{folder}/{uri}")
                assert status == 200 and body
                fetched += 1
        assert fetched >= 2 * len(playlists)  # an init and at least one media segment each
        # A plain `podman stop` (SIGTERM to tini) stops every role in order, exit status 0.
        started = time.monotonic()
        podman("stop", "--time", "60", name, timeout=120)
        stopped_in = time.monotonic() - started
        state = json.loads(podman("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, podman("logs", name, check=False).stdout[-3000:]
        assert stopped_in < 50
        print(f"\ncontainer timings: {built.seconds}, stop {stopped_in:.1f}s, {fetched} files played")
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)
