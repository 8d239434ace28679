"""Helpers for tests: polling with a deadline (never a bare sleep), process inspection."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02,
               what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def async_wait_until(predicate: Callable[[], Awaitable[T]], *, timeout: float = 10.0,
                           interval: float = 0.02, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def shm_segments() -> set[str]:
    """Names in /dev/shm (POSIX shared memory segments) right now."""
    return set(os.listdir("/dev/shm")) if Path("/dev/shm").is_dir() else set()


def processes_titled(prefix: str = "streamgate") -> list[tuple[int, str]]:
    """(pid, cmdline) of live processes whose title starts with ``prefix``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            state = next((line for line in (entry / "status").read_text().splitlines()
                          if line.startswith("State:")), "")
        except OSError:
            continue
        if cmdline.startswith(prefix) and "zombie" not in state:
            found.append((int(entry.name), cmdline))
    return found


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.extend(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def descendants_of(pid: int) -> list[int]:
    """Every live descendant of ``pid``, depth first."""
    result: list[int] = []
    stack = [pid]
    while stack:
        for child in children_of(stack.pop()):
            result.append(child)
            stack.append(child)
    return result


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def title_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def terminate(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 20.0) -> int:
    """SIGTERM a child and reap it; SIGKILL it if it outlives ``timeout``. Returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path, *, timeout: float = 30.0,
                 what: str = "/health") -> None:
    """Poll ``url`` until it answers 200; fail at once with the log if the process exits first."""

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    wait_until(healthy, timeout=timeout, what=what)


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``4m``) mounted on ``mount`` (made here) for the block; a small disk
    a test can fill. Needs root: callers skip first when not."""
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True, timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False, timeout=30)
        if os.path.ismount(mount):
            subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def fill_disk(mount: Path) -> Path:
    """Allocate every free block of ``mount`` to ``<mount>/filler.bin`` (real blocks, not a hole)."""
    filler = mount / "filler.bin"
    with open(filler, "wb") as f:
        size = shutil.disk_usage(mount).free
        while size > 0:
            try:
                os.posix_fallocate(f.fileno(), 0, size)
                break
            except OSError:
                size -= 4096
    return filler


def journaled_state(path: Path, job_id: str) -> str | None:
    """A job's state in the broker's SQLite journal at ``path``, read-only."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return row[0] if row else None
    finally:
        db.close()
