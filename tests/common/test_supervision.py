"""The supervision helper: backoff with reset, liveness, and ordered stop of real processes."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from streamgate.common.supervision import Backoff, Liveness, Subprocess, stop_in_order


def test_backoff_doubles_to_the_cap_and_resets_after_an_uptime() -> None:
    backoff = Backoff(initial_s=0.5, max_s=4, reset_after_s=60)
    assert [backoff.next_delay(uptime_s=1) for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    assert backoff.next_delay(uptime_s=60) == 0.5  # it had stayed up: not a crash loop
    assert backoff.next_delay(uptime_s=0) == 1


def test_liveness_pings_each_interval_and_calls_a_silent_child_hung() -> None:
    live = Liveness(interval_s=1, started_at=100)
    assert not live.ping_due(100.5)  # not before one interval up
    assert live.ping_due(101)
    live.pinged(101)
    assert not live.ping_due(101.5) and not live.hung(101.5)
    live.answered()
    assert not live.ping_due(101.5) and live.ping_due(102)
    live.pinged(102)
    assert live.hung(103.1) and live.silent_for(103.1) == pytest.approx(1.1)


CHILD = """
import signal, sys
name, log, obey = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
def on_term(*_):
    with open(log, "a") as f:
        f.write(name + "\\n")
    if obey:
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    signal.pause()
"""


async def _child(name: str, log: Path, *, obey: bool = True) -> Subprocess:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, name, str(log),
                                                "1" if obey else "0", stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
    return Subprocess(name, proc)


async def test_stop_in_order_goes_last_first_and_kills_what_outlives_the_deadline(tmp_path: Path) -> None:
    log = tmp_path / "terminated"
    first, second = await _child("first", log), await _child("second", log)
    stubborn = await _child("stubborn", log, obey=False)
    children = [first, second, stubborn]
    try:
        t0 = time.monotonic()
        killed = await stop_in_order([[first], [second, stubborn]], timeout_s=1.0)
        assert killed == 1
        assert time.monotonic() - t0 >= 1.0  # the stubborn one was given its deadline
        # The last stage first (both of its children got SIGTERM), then the first stage.
        order = log.read_text().split()
        assert sorted(order[:2]) == ["second", "stubborn"] and order[2] == "first"
        assert first.process.returncode == 0 and second.process.returncode == 0
        assert stubborn.process.returncode == -9
    finally:
        for child in children:
            if child.running():
                child.kill()
                await child.wait()
