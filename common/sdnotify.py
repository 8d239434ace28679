"""systemd's notify protocol (sd_notify(3)) over the AF_UNIX datagram socket in $NOTIFY_SOCKET."""

from __future__ import annotations

import socket

from streamgate.common.config import SystemdEnvironment


class Notifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING; a no-op when not started by systemd."""

    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None) -> None:
        self._path = socket_path
        if socket_path and socket_path.startswith("@"):
            self._path = "\0" + socket_path[1:]  # abstract namespace
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None

    @classmethod
    def from_environment(cls, env: SystemdEnvironment) -> Notifier:
        return cls(env.notify_socket, env.watchdog_usec)

    @property
    def enabled(self) -> bool:
        return self._path is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        # Half of WatchdogSec, as sd_watchdog_enabled(3) recommends.
        return self.watchdog_usec / 2_000_000 if self.watchdog_usec else None

    def send(self, *fields: str) -> bool:
        if self._path is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.sendto("\n".join(fields).encode(), self._path)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
