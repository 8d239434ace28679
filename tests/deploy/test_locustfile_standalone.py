"""loadtests/locustfile.py runs on a machine with locust and nothing of StreamGate.

Statically: the locustfile and the modules it imports from loadtests/ import only the standard
library, locust and each other. For real: a Python that sees locust's installed packages but not
streamgate (the venv's site-packages minus streamgate, on PYTHONPATH, with site disabled) imports
it, makes the uploaders' clip with ffmpeg, and runs locust headless against a real node.
"""

from __future__ import annotations

import ast
import csv
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from deploy_support import REPO

LOADTESTS = REPO / "loadtests"
# What the locustfile may import beside the standard library.
ALLOWED = {"locust"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_locustfile_imports_only_locust_and_its_own_modules() -> None:
    local = {p.stem for p in LOADTESTS.glob("*.py")}
    seen, todo = set(), ["locustfile"]
    while todo:
        name = todo.pop()
        seen.add(name)
        for module in _imports(LOADTESTS / f"{name}.py"):
            if module in local:
                if module not in seen:
                    todo.append(module)
            elif module == "streamgate":
                # Only as a fallback guarded by ImportError (loadtests/clip.py), never needed.
                assert name == "clip", f"{name}.py imports streamgate"
            else:
                assert module in sys.stdlib_module_names or module in ALLOWED, f"{name}.py imports {module}"
    assert seen == {"locustfile", "tus", "hls", "clip"}


def _locust_only_path(tmp_path: Path) -> Path:
    """This venv's site-packages without streamgate: what `pip install locust` alone would give."""
    site = tmp_path / "site"
    site.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.name.lower().startswith(("streamgate", "__editable__")) or entry.suffix == ".pth":
            continue
        (site / entry.name).symlink_to(entry)
    return site


def test_the_locustfile_runs_without_streamgate(tmp_path: Path, run_platform: Callable[..., Any]) -> None:
    pytest.importorskip("locust", reason="locust is the load extra (make loadtest installs it)")
    site = _locust_only_path(tmp_path)
    python = getattr(sys, "_base_executable", sys.executable)
    env = {"PYTHONPATH": f"{LOADTESTS}:{site}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "LOADTEST_BEHAVIOUR": str(tmp_path / "behaviour.json"), "LOADTEST_SEED": "3"}
    probe = subprocess.run([python, "-S", "-c", "import locustfile, clip\n"
                            "try:\n import streamgate\nexcept ImportError:\n print('no streamgate')\n"
                            "print(len(clip.make_clip()))"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.split()
    assert lines[:2] == ["no", "streamgate"] and int(lines[2]) > 1000, probe.stdout

    platform = run_platform()
    run = subprocess.run([python, "-S", "-m", "locust", "-f", str(LOADTESTS / "locustfile.py"), "--headless",
                          "--host", platform.url, "--users", "3", "--spawn-rate", "3", "--run-time", "12s",
                          "--csv", str(tmp_path / "load"), "--only-summary", "Uploader"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=110)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with open(tmp_path / "load_stats.csv") as stats:
        rows = {r["Name"]: r for r in csv.DictReader(stats)}
    assert int(rows["Aggregated"]["Request Count"]) > 0 and int(rows["Aggregated"]["Failure Count"]) == 0
    assert "uploads" in (tmp_path / "behaviour.json").read_text()
