"""Zero-copy writes straight to a transport's socket, on uvloop and on the asyncio loop alike.

aiohttp's FileResponse calls ``loop.sendfile``, which uvloop does not implement, so under uvloop it
silently falls back to read()+write() (about 3x the CPU per megabyte, issue 5). Here the bytes go
to the socket with ``os.writev``/``os.sendfile`` on the transport's own descriptor; while the
socket is full we wait for writability on a ``dup`` of that descriptor (both loops refuse a
watcher on a descriptor a transport owns, and epoll keys a watch by descriptor number).

Precondition: the transport's own write buffer is empty, or bytes would be reordered.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable


class DirectWrite:
    """Header bytes then an optional file range, written to the socket without copies."""

    __slots__ = ("loop", "sock_fd", "chunks", "fd", "offset", "count", "done", "wait_fd", "own_wait",
                 "sent", "sock", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock_fd: int, chunks: list[bytes],
                 fd: int | None, offset: int, count: int,
                 done: Callable[[BaseException | None], None] | None = None,
                 wait_fd: int = -1, sock: socket.socket | None = None) -> None:
        self.loop = loop
        self.sock_fd = sock_fd
        self.chunks = chunks
        self.fd = fd
        self.offset = offset
        self.count = count if fd is not None else 0
        self.done = done
        # A dup of the socket to watch for writability: the caller's (kept open), or made here.
        self.wait_fd = wait_fd
        self.own_wait = wait_fd < 0
        self.sent = 0
        # With a socket object the header goes out with MSG_MORE, so the kernel sends it in the
        # same segment as the file's first bytes (what nginx gets from TCP_NOPUSH), not alone.
        self.sock = sock
        self.waiting = False

    def start(self) -> bool:
        """Write what the socket takes now; True when finished, False when ``done`` will be called.

        Raises OSError (peer gone) when that happens before the first wait.
        """
        return self._step()

    def _step(self) -> bool:
        chunks = self.chunks
        sock = self.sock_fd
        try:
            while chunks:
                if self.sock is not None and self.count > 0:
                    n = self.sock.sendmsg(chunks, (), socket.MSG_MORE)
                else:
                    n = os.writev(sock, chunks)
                self.sent += n
                while chunks and n >= len(chunks[0]):
                    n -= len(chunks[0])
                    chunks.pop(0)
                if n:
                    chunks[0] = chunks[0][n:]
            while self.count > 0 and self.fd is not None:  # a count means a file (__init__)
                n = os.sendfile(sock, self.fd, self.offset, self.count)
                if n == 0:
                    raise EOFError("file shorter than its recorded size")
                self.offset += n
                self.count -= n
                self.sent += n
        except BlockingIOError:
            self._wait()
            return False
        self._close_wait()
        return True

    def _wait(self) -> None:
        if self.wait_fd < 0:
            self.wait_fd = os.dup(self.sock_fd)
        self.loop.add_writer(self.wait_fd, self._on_writable)
        self.waiting = True

    def _on_writable(self) -> None:
        self.loop.remove_writer(self.wait_fd)
        self.waiting = False
        try:
            finished = self._step()
        except (OSError, EOFError) as exc:
            self._close_wait()
            self._finish(exc)
            return
        if finished:
            self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        if self.done is not None:
            self.done(exc)

    def _close_wait(self) -> None:
        if self.wait_fd >= 0:
            if self.waiting:
                self.loop.remove_writer(self.wait_fd)
                self.waiting = False
            if self.own_wait:
                os.close(self.wait_fd)
                self.wait_fd = -1

    def cancel(self) -> None:
        """Stop waiting (the connection is gone); ``done`` is not called."""
        self.done = None
        self._close_wait()


def socket_fd(transport: asyncio.BaseTransport) -> int:
    sock = transport.get_extra_info("socket")
    if sock is None:
        raise ConnectionResetError("the connection has no socket")
    return sock.fileno()


async def wait_flushed(transport: asyncio.WriteTransport) -> None:
    """Wait until the transport has handed all it buffered to the kernel."""
    if transport.get_write_buffer_size() == 0:
        return
    loop = asyncio.get_running_loop()
    wait_fd = os.dup(socket_fd(transport))
    try:
        while transport.get_write_buffer_size() > 0 and not transport.is_closing():
            writable = loop.create_future()
            loop.add_writer(wait_fd, writable.set_result, None)
            try:
                await writable
            finally:
                loop.remove_writer(wait_fd)
            await asyncio.sleep(0)  # let the transport's own writer run first
    finally:
        os.close(wait_fd)
    if transport.is_closing():
        raise ConnectionResetError("connection closed while flushing")


async def send(transport: asyncio.WriteTransport, chunks: list[bytes], fd: int | None,
               offset: int, count: int) -> int:
    """Awaitable form for handlers: flush the transport, then write ``chunks`` and the file range."""
    await wait_flushed(transport)
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def done(exc: BaseException | None) -> None:
        if not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    write = DirectWrite(loop, socket_fd(transport), chunks, fd, offset, count, done)
    try:
        if not write.start():
            await waiter
    except BaseException:
        write.cancel()
        raise
    return write.sent
