"""Releases for the fleet: wheels of this tree at a chosen version, and the dependencies they need.

The hosts have no route to a package index, so a release is a wheel (installed with
``--no-deps --no-index``) and its dependencies are this test venv's, shown read-only inside each
host: ``deps_farm`` makes a directory of links to them (streamgate itself left out) that a
``.pth`` line in the host's venv puts on sys.path, the same trick tests/deploy's converge uses.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPS_IN_HOST = "/opt/streamgate-deps"
WHEEL_CACHE = Path("/var/cache/streamgate-fleet/wheels")
# What Debian's Python 3.11.2 on the hosts needs that this venv's Python does not: redis-py
# imports async-timeout below 3.11.3. Downloaded once with pip (PyPI), kept in WHEEL_CACHE.
HOST_ONLY = {"async-timeout>=4.0.3": "async_timeout-*.whl"}


def build_wheel(version: str, out: Path, scratch: Path, patch: Callable[[Path], None] | None = None) -> Path:
    """A wheel of this tree with ``version`` in its metadata (the tree itself is not touched);
    ``patch`` edits the copy first (a bad release's defect)."""
    src = scratch / f"src-{version}"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("edge", "farm", "control", "common", "streamgate"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    if patch is not None:
        patch(src)
    shutil.copy2(REPO / "README.md", src / "README.md")
    pyproject = (REPO / "pyproject.toml").read_text()
    (src / "pyproject.toml").write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject, count=1))
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(out), str(src)], check=True, timeout=180)
    (wheel,) = out.glob(f"streamgate-{version}-*.whl")
    return wheel


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def deps_farm(farm: Path) -> Path:
    """Links named like this venv's site-packages entries, pointing where the host sees them."""
    farm.mkdir(parents=True, exist_ok=True)
    for entry in site_packages().iterdir():
        if entry.name.lower().startswith(("streamgate", "__editable__")) or entry.suffix == ".pth":
            continue
        (farm / entry.name).symlink_to(f"{DEPS_IN_HOST}/all/{entry.name}")
    for requirement, pattern in HOST_ONLY.items():
        if not list(WHEEL_CACHE.glob(pattern)):
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d",
                            str(WHEEL_CACHE), requirement], check=True, timeout=120)
        # A pure-Python wheel is a zip of what site-packages holds: unpacked, it is importable.
        with zipfile.ZipFile(sorted(WHEEL_CACHE.glob(pattern))[-1]) as wheel:
            wheel.extractall(farm)
    return farm
