"""The `streamgate` command line as a user runs it: a real subprocess per call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streamgate.control.cli import VERBS


def streamgate(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGATE")}
    return subprocess.run([sys.executable, "-m", "streamgate", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=cwd, timeout=60)


def test_help_lists_every_verb() -> None:
    result = streamgate("--help")
    assert result.returncode == 0
    for verb in VERBS:
        assert verb in result.stdout


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_help(verb: str) -> None:
    result = streamgate(verb, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: streamgate" in result.stdout


def test_config_check_prints_the_effective_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server: {port: 9123}\ntranscoder: {task_timeout: 2h}\n")
    result = streamgate("--config", str(path), "config", "check", env={"TRANSCODER_WORKERS": "7"})
    assert result.returncode == 0, result.stderr
    assert "port: 9123" in result.stdout
    assert "task_timeout: 2h" in result.stdout
    assert "worker_pool_size: 7" in result.stdout


def test_global_options_after_the_verb(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server: {port: 9124}\n")
    result = streamgate("config", "check", "--config", str(path), "--log-level", "warning")
    assert result.returncode == 0, result.stderr
    assert "port: 9124" in result.stdout


def test_config_check_names_the_bad_key_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("transcoder:\n  scaling_policy:\n    max_workers: lots\n")
    result = streamgate("--config", str(path), "config", "check")
    assert result.returncode == 2
    assert "transcoder.scaling_policy.max_workers" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_from_environment_variable(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("registry: {service_prefix: from-env-file}\n")
    result = streamgate("config", "check", env={"STREAMGATE_CONFIG": str(path)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "service_prefix: from-env-file" in result.stdout
