"""``streamgate run``: every role of a single node under one supervisor.

The supervisor runs no work of its own. It starts the roles as child processes (each in its own
session, so a terminal's Ctrl-C reaches only the supervisor and shutdown keeps its order),
restarts a role that dies, and on SIGINT/SIGTERM stops them in reverse start order within
``server.shutdown_timeout``, killing what is left. Children set a parent-death signal, so they
exit even when the supervisor itself is killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from streamgate.common import loops
from streamgate.common.config import Config, child_environment
from streamgate.common.process import set_title
from streamgate.common.supervision import Backoff, Subprocess, pause, stop_in_order

log = logging.getLogger("streamgate.run")

# Start order; shutdown is the reverse: the API stops taking work before the farm drains.
ROLES: tuple[str, ...] = ("broker", "farm", "edge", "control")


class Child:
    def __init__(self, role: str, argv: list[str], backoff: Backoff) -> None:
        self.role = role
        self.argv = argv
        self.process: asyncio.subprocess.Process | None = None
        self.backoff = backoff
        self.started_at = 0.0


class Supervisor:
    def __init__(self, config: Config, global_args: Sequence[str], roles: Sequence[str] = ROLES) -> None:
        self.config = config
        self.stop = asyncio.Event()
        base = [sys.executable, "-m", "streamgate", *global_args]
        self.children = [Child(role, [*base, role], Backoff.from_config(config.server)) for role in roles]
        self._env = child_environment(os.getpid())
        self._watchers: set[asyncio.Task[None]] = set()

    async def start_child(self, child: Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            *child.argv, env=self._env, start_new_session=True, stdin=asyncio.subprocess.DEVNULL,
        )
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.role, child.process.pid)
        task = asyncio.create_task(self.watch(child), name=f"watch-{child.role}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def watch(self, child: Child) -> None:
        assert child.process is not None
        code = await child.process.wait()
        if self.stop.is_set():
            return
        # A quick death after a long run resets the backoff; a crash loop backs off.
        delay = child.backoff.next_delay(time.monotonic() - child.started_at)
        log.error("%s exited with %s; restarting in %.1fs", child.role, code, delay)
        if not await pause(self.stop, delay):
            await self.start_child(child)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        for child in self.children:
            await self.start_child(child)
        await self.stop.wait()
        return await self.shutdown()

    async def shutdown(self) -> int:
        # One stage per role, in start order: stop_in_order stops the last started first.
        stages = [[Subprocess(child.role, child.process, group=True)]
                  for child in self.children if child.process is not None]
        killed = await stop_in_order(stages, float(self.config.server.shutdown_timeout))
        for task in list(self._watchers):
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        log.info("stopped %d roles (%d killed after the shutdown timeout)", len(self.children), killed)
        return 1 if killed else 0


def run(config: Config, global_args: Sequence[str]) -> int:
    set_title("run")
    config.storage.root.mkdir(parents=True, exist_ok=True)
    return loops.run(Supervisor(config, global_args).run())
