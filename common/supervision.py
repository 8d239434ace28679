"""How StreamGate keeps child processes: restart backoff, ping/pong liveness, ordered stop.

One set of rules for the three supervisors: the node supervisor (``streamgate run``,
control/supervisor.py), the edge's copies of itself (edge/server.py) and the farm pool
(farm/pool.py). The structure follows uvicorn's ``supervisors/multiprocess.py`` and the ZeroMQ
guide's reconnect rule: a child that dies is restarted after a delay that doubles up to a cap (a
crash loop does not spin), and starts again from the first delay once a child has stayed up long
enough (one crash after a day is not a loop). Where a child answers pings over a pipe (the farm
workers), one that stops answering is hung and is killed. On shutdown children stop in reverse
start order, each stage terminated, waited for under one shared deadline, then killed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from typing import Protocol

from streamgate.common.config import ServerConfig

log = logging.getLogger("streamgate.supervision")


class Backoff:
    """Restart delays: ``initial_s``, doubling per restart up to ``max_s``; reset once the child
    that died had stayed up ``reset_after_s``."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 10.0, reset_after_s: float = 60.0) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.reset_after_s = reset_after_s
        self.failures = 0  # restarts since the last reset

    @classmethod
    def from_config(cls, server: ServerConfig) -> Backoff:
        return cls(float(server.restart_delay), float(server.restart_delay_max),
                   float(server.restart_reset_after))

    def next_delay(self, uptime_s: float) -> float:
        """The wait before restarting a child that died after ``uptime_s`` up."""
        if uptime_s >= self.reset_after_s:
            self.failures = 0
        delay = min(self.max_s, self.initial_s * 2 ** self.failures)
        self.failures += 1
        return delay


async def pause(stop: asyncio.Event, delay_s: float) -> bool:
    """Wait ``delay_s`` unless ``stop`` is set first; True when stopping (then do not restart)."""
    try:
        await asyncio.wait_for(stop.wait(), delay_s)
        return True
    except TimeoutError:
        return False


class Liveness:
    """Ping/pong with one child: a ping every ``interval_s`` once it is up; no pong within another
    interval means it is hung (a blocked loop can answer nothing)."""

    def __init__(self, interval_s: float, started_at: float) -> None:
        self.interval_s = interval_s
        self.started_at = started_at
        self.ping_sent: float | None = None
        self.last_ping = 0.0

    def ping_due(self, now: float) -> bool:
        return (self.ping_sent is None and now - self.started_at >= self.interval_s
                and now - self.last_ping >= self.interval_s)

    def pinged(self, now: float) -> None:
        self.ping_sent = self.last_ping = now

    def answered(self) -> None:
        self.ping_sent = None

    def silent_for(self, now: float) -> float:
        """Seconds since an unanswered ping (0 when none is outstanding)."""
        return 0.0 if self.ping_sent is None else now - self.ping_sent

    def hung(self, now: float) -> bool:
        return self.silent_for(now) > self.interval_s


class Stoppable(Protocol):
    """A child as the ordered stop sees it."""

    name: str

    def running(self) -> bool: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    async def wait(self) -> None: ...


class Subprocess:
    """An ``asyncio`` subprocess; ``group``: it leads its own session, kill its whole group."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, *, group: bool = False) -> None:
        self.name = name
        self.process = process
        self.group = group

    def running(self) -> bool:
        return self.process.returncode is None

    def terminate(self) -> None:
        try:
            self.process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        try:
            if self.group:
                os.killpg(self.process.pid, signal.SIGKILL)
            else:
                self.process.kill()
        except ProcessLookupError:
            pass

    async def wait(self) -> None:
        await self.process.wait()


class ChildProcess:
    """A ``multiprocessing`` child, waited for on its sentinel (no thread blocked in join)."""

    def __init__(self, name: str, process: BaseProcess) -> None:
        self.name = name
        self.process = process

    def running(self) -> bool:
        return self.process.exitcode is None

    def _signal(self, sig: int) -> None:
        if self.process.pid is None:
            return
        try:
            os.kill(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    async def wait(self) -> None:
        if self.process.exitcode is None:
            loop = asyncio.get_running_loop()
            exited = loop.create_future()
            fd = self.process.sentinel

            def exit_seen() -> None:
                if not exited.done():
                    exited.set_result(None)

            loop.add_reader(fd, exit_seen)
            try:
                await exited
            finally:
                loop.remove_reader(fd)
        # The sentinel closes at exit: join only collects the status, it does not wait.
        await asyncio.to_thread(self.process.join, 5)


async def stop_in_order(stages: Sequence[Sequence[Stoppable]], timeout_s: float) -> int:
    """Stop ``stages`` (given in start order) last first: a stage's children are terminated
    together and waited for; what outlives the shared ``timeout_s`` deadline is killed.
    Returns how many were killed."""
    deadline = time.monotonic() + timeout_s
    killed = 0
    for stage in reversed(stages):
        live = [child for child in stage if child.running()]
        if not live:
            continue
        for child in live:
            child.terminate()
        waits = {asyncio.create_task(child.wait(), name=f"stop-{child.name}"): child for child in live}
        # A stage reached after the deadline still gets a moment to exit on its own.
        _, pending = await asyncio.wait(waits, timeout=max(0.1, deadline - time.monotonic()))
        for task in pending:
            log.error("%s did not stop in time; killing it", waits[task].name)
            waits[task].kill()
            killed += 1
        for task in waits:
            await task  # surfaces an error of a wait; a killed child's wait ends now
    return killed
