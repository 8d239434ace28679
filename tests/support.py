"""Helpers for tests: polling with a deadline (never a bare sleep), process inspection."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
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
