"""Runs one StreamGate role as a long-lived process: the same shape for every role.

Order of a life: title and parent-death signal, typed config, event loop (uvloop when present),
signal handlers that only set ``stop``, the role's ``serve`` coroutine, systemd notifications
(READY when the role says it serves, WATCHDOG from the loop, STOPPING on the way out).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from streamgate.common import loops
from streamgate.common.config import Config, systemd_environment
from streamgate.common.process import die_with_parent, set_title
from streamgate.common.sdnotify import Notifier

log = logging.getLogger("streamgate.service")


class ServiceContext:
    """What a role's ``serve`` coroutine gets: config, the stop event, readiness and tasks."""

    def __init__(self, role: str, config: Config, notifier: Notifier, parent_pid: int | None = None) -> None:
        self.role = role
        self.parent_pid = parent_pid
        self.config = config
        self.stop = asyncio.Event()
        self.is_ready = asyncio.Event()
        self._notifier = notifier
        self._tasks: set[asyncio.Task[Any]] = set()
        # Registration hints for the control plane (common/consul/registry.py), set before ready() when
        # the role's defaults do not fit: the port it serves, its check ("http": Consul polls
        # /health; "ttl": refreshed from this loop) and a probe answering (status, note).
        self.service_port: int | None = None
        self.health_check: Literal["http", "ttl", "none"] | None = None
        self.health_probe: Callable[[], tuple[Literal["passing", "warning", "critical"], str]] | None = None

    def ready(self, status: str = "") -> None:
        """Call once the role actually serves (socket bound, peers reachable)."""
        self.is_ready.set()
        self._notifier.ready(status or f"{self.role} serving")
        log.info("%s ready%s", self.role, f": {status}" if status else "")

    def orphaned(self) -> bool:
        """The supervisor that started this process is gone (its parent-death signal stops us)."""
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def status(self, text: str) -> None:
        self._notifier.status(text)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """A background task that is kept, and whose failure is logged, never lost."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: task %s failed", self.role, task.get_name(), exc_info=task.exception())
            self.stop.set()

    async def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


Serve = Callable[[ServiceContext], Coroutine[Any, Any, None]]


def configure_logging(level: str | int = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )


def run_service(role: str, serve: Serve, config: Config, *, prefer_uvloop: bool = True,
                parent_pid: int | None = None) -> int:
    """Run ``serve`` until SIGTERM/SIGINT; returns the process exit code."""
    set_title(role)
    if parent_pid is not None:
        die_with_parent(signal.SIGTERM, parent_pid)
    notifier = Notifier.from_environment(systemd_environment())

    async def main() -> int:
        ctx = ServiceContext(role, config, notifier, parent_pid)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, ctx.stop.set)
        if notifier.watchdog_interval_s:
            ctx.spawn(_watchdog(notifier, notifier.watchdog_interval_s), "watchdog")
        registration = None
        if config.registry.type == "consul" and config.registry.register:
            registration = ctx.spawn(_register_when_ready(ctx), "registration")
        # STATUS= is what `systemctl status` shows under the unit: say what the role is doing.
        notifier.status(f"{role} starting")
        serving = asyncio.create_task(serve(ctx), name=f"{role}-serve")
        stopper = asyncio.create_task(ctx.stop.wait(), name="stop")
        done, _ = await asyncio.wait({serving, stopper}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if serving in done:
            stopper.cancel()
            if (exc := serving.exception()) is not None:
                log.error("%s failed", role, exc_info=exc)
                notifier.status(f"{role} failed: {type(exc).__name__}: {exc}")
                code = 1
        else:
            notifier.stopping(f"{role} stopping")
            try:
                await asyncio.wait_for(serving, timeout=config.server.shutdown_timeout + 5)
            except TimeoutError:
                log.error("%s did not stop within its shutdown timeout", role)
                code = 1
            except Exception:
                log.exception("%s failed while stopping", role)
                code = 1
        if registration is not None:
            # Deregistration runs once stop is set; let it finish before the tasks are cancelled.
            ctx.stop.set()
            await asyncio.wait({registration}, timeout=5)
        await ctx.cancel_tasks()
        notifier.close()
        return code

    return loops.run(main(), prefer_uvloop=prefer_uvloop)


async def _register_when_ready(ctx: ServiceContext) -> None:
    # Registered from the role's own loop: a wedged loop stops the TTL refreshes (issue 7).
    from streamgate.common.consul.registry import keep_registered

    waiters = [asyncio.ensure_future(event.wait()) for event in (ctx.is_ready, ctx.stop)]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    if ctx.stop.is_set():
        return
    try:
        await keep_registered(ctx.role, ctx.config, ctx.stop, port=ctx.service_port,
                              check=ctx.health_check, probe=ctx.health_probe)
    except Exception:  # the registry is the control plane's concern: the role keeps serving
        log.exception("%s: Consul registration stopped; serving unregistered", ctx.role)


async def _watchdog(notifier: Notifier, interval_s: float) -> None:
    # Sent from the loop itself: a blocked loop stops the pings and systemd restarts the unit.
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval_s)

