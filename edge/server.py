"""The edge role: N processes serving one port with SO_REUSEPORT, each on uvloop.

``serve(ctx)`` is what ``streamgate edge`` and ``streamgate run`` both run. With
``server.workers`` > 1 (0: one per CPU) the process binds its own listener first (a busy port
fails here, once), then starts ``workers - 1`` copies of itself (``streamgate edge`` with
``server.workers = 1``), which die with it and are restarted when they die. The kernel spreads
new connections across the listeners. Every connection starts on the fast path
(edge/fastpath/protocol.py) unless ``edge.fast_path`` is false.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from typing import Any

from aiohttp import web

from streamgate.common.config import Config, child_environment
from streamgate.common.metrics import mark_process_dead
from streamgate.common.service import ServiceContext
from streamgate.common.supervision import Backoff, Subprocess, pause, stop_in_order
from streamgate.edge.app import build_app
from streamgate.edge.fastpath.fallback import json_errors
from streamgate.edge.fastpath.protocol import FastPath
from streamgate.edge.playback.routes import DELIVERY

log = logging.getLogger("streamgate.edge")

# What requests in flight get once the parent died: the stored bytes of a PATCH are kept (its
# offset is acknowledged as it goes), the rest ends.
ORPHAN_DRAIN_S = 1.0

# Children of this process must not speak to systemd for the unit (sd_notify(3)).
def worker_count(configured: int) -> int:
    return configured if configured > 0 else (os.cpu_count() or 1)


class EdgeServer:
    """One process's listener: aiohttp's app behind the fast path, on a SO_REUSEPORT socket."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.app = build_app(config)
        self.runner = web.AppRunner(self.app, handle_signals=False, access_log=None,
                                    shutdown_timeout=float(config.server.shutdown_timeout),
                                    keepalive_timeout=config.server.edge_read_timeout(config.edge))
        self.fast: FastPath | None = None
        self.server: asyncio.Server | None = None
        self._sweep: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = self.config
        await self.runner.setup()
        handler = self.runner.server
        assert handler is not None  # made by setup()
        factory: Any = json_errors(handler)
        if config.edge.fast_path:
            # server.read_timeout / write_timeout (the seed's names) refine edge.client_timeout.
            self.fast = FastPath(self.app, self.app[DELIVERY], factory,
                                 config.server.edge_read_timeout(config.edge), int(config.edge.max_header_size),
                                 write_timeout_s=config.server.edge_write_timeout(config.edge))
            factory = self.fast
            self._sweep = asyncio.create_task(self.fast.sweep(), name="fast-path-sweep")
        self.server = await asyncio.get_running_loop().create_server(
            factory, sock=listen_socket(config), backlog=1024)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    def stop_accepting(self) -> None:
        """Close this process's listener: new connections go to the other processes or are refused."""
        if self.server is not None:
            self.server.close()

    async def close(self, drain_s: float | None = None) -> None:
        """Stop accepting, let requests in flight finish for ``drain_s`` (``server.shutdown_timeout``
        when None), then close what is left."""
        self.stop_accepting()
        if drain_s is not None and self.runner.server is not None:
            await self.runner.server.shutdown(drain_s)
        if self._sweep is not None:
            self._sweep.cancel()
            await asyncio.gather(self._sweep, return_exceptions=True)
        if self.fast is not None:
            await self.fast.close()
        await self.runner.cleanup()


def listen_socket(config: Config) -> socket.socket:
    host, port = config.server.host, config.server.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # SO_REUSEPORT lets several edge processes share the port; the kernel spreads connections.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if config.edge.socket_send_buffer:
            # Accepted sockets inherit it (socket(7)).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(config.edge.socket_send_buffer))
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(ctx: ServiceContext) -> None:
    config = ctx.config
    edge = EdgeServer(config)
    await edge.start()
    workers = worker_count(config.server.workers)
    pool = WorkerPool(ctx, workers - 1) if workers > 1 else None
    if pool is not None:
        ctx.spawn(pool.run(), "edge-workers")
    ctx.ready(f"edge on {config.server.host}:{config.server.port}, {workers} process(es)")
    try:
        await ctx.stop.wait()
    finally:
        # The port stops taking connections first: the copies' drain no longer keeps it open.
        edge.stop_accepting()
        # Orphaned (the supervisor was killed): nothing upstream will take the work any more, so
        # requests in flight get a moment, not the whole shutdown timeout (issue 14).
        drain = ORPHAN_DRAIN_S if ctx.orphaned() else float(config.server.shutdown_timeout)
        if pool is not None:
            await pool.stop(drain)
        await edge.close(drain)
        handoffs = edge.fast.handoffs if edge.fast else 0
        log.info("edge stopped (%d connections handed from the fast path to aiohttp)", handoffs)


class WorkerPool:
    """The other edge processes of this port: started, restarted when they die, stopped in order."""

    def __init__(self, ctx: ServiceContext, count: int) -> None:
        self.ctx = ctx
        self.count = count
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = asyncio.Event()
        self.env = child_environment(
            os.getpid(), STREAMGATE__SERVER__WORKERS="1", SERVER_PORT=str(ctx.config.server.port),
            # One registration per port: the first process's (docs/control-plane.md). A copy that
            # registered the shared id would deregister it when it stops.
            STREAMGATE__REGISTRY__REGISTER="false")
        self.argv = [sys.executable, "-m", "streamgate", *_global_args(), "edge"]

    async def run(self) -> None:
        await asyncio.gather(*(self.keep(slot) for slot in range(self.count)))

    async def keep(self, slot: int) -> None:
        backoff = Backoff.from_config(self.ctx.config.server)
        while not self.stopping.is_set():
            proc = await asyncio.create_subprocess_exec(*self.argv, env=self.env,
                                                        stdin=asyncio.subprocess.DEVNULL)
            self.procs[slot] = proc
            started = time.monotonic()
            code = await proc.wait()
            mark_process_dead(proc.pid)
            if self.stopping.is_set():
                return
            delay = backoff.next_delay(time.monotonic() - started)
            log.error("edge worker %d (pid %d) exited with %s; restarting in %.1fs",
                      slot, proc.pid, code, delay)
            if await pause(self.stopping, delay):
                return

    async def stop(self, timeout_s: float) -> None:
        self.stopping.set()
        # The copies are peers: one stage, terminated together, under one deadline.
        live = [Subprocess(f"edge worker {p.pid}", p) for p in self.procs.values() if p.returncode is None]
        await stop_in_order([live], timeout_s)
        for child in live:
            mark_process_dead(child.process.pid)


_GLOBAL_ARGS: list[str] = []


def set_global_args(args: list[str]) -> None:
    """The CLI's global options (``--config``, ``--log-level``), repeated for worker processes."""
    _GLOBAL_ARGS[:] = args


def _global_args() -> list[str]:
    return list(_GLOBAL_ARGS)
