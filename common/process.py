"""Process identity and lifetime: titles for ``ps``, and dying with the parent."""

from __future__ import annotations

import ctypes
import os
import signal

import setproctitle

_PR_SET_PDEATHSIG = 1


def set_title(role: str) -> None:
    """Name this process ``streamgate <role>`` so ps and top show roles."""
    setproctitle.setproctitle(f"streamgate {role}")


def die_with_parent(sig: int = signal.SIGTERM, expected_parent: int | None = None) -> None:
    """Ask the kernel to send ``sig`` when the parent dies, even by SIGKILL (Linux prctl).

    ``expected_parent`` closes the race where the parent died before the call: then we were
    already re-parented and signal ourselves.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except OSError:  # not Linux: the supervisor's own shutdown still stops children
        return
    if expected_parent is not None and os.getppid() != expected_parent:
        os.kill(os.getpid(), sig)
