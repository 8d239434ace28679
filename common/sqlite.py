"""The one way StreamGate opens a SQLite file: the broker journal, the catalog, upload state, nonces.

WAL, so several processes (the edge's copies, ``streamgate run``'s roles) share one file and
readers never block the writer; ``synchronous=FULL``, so a commit is on disk when it returns (an
acknowledged upload offset or an accepted job survives a power cut); and a ``busy_timeout``, so a
writer that finds the file locked by another process waits for it instead of failing at once with
"database is locked" (the journal lacked it: issue 11).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

BUSY_TIMEOUT_S = 10.0


def connect(path: Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S, foreign_keys: bool = True) -> sqlite3.Connection:
    """Open (creating its folder) ``path`` in autocommit mode, shareable across the event loop's threads.

    ``isolation_level=None``: callers write single statements or their own ``BEGIN IMMEDIATE``
    transactions; Python's implicit transactions would hold locks between statements.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    # Also set by timeout= above; stated here so it holds whatever the driver's default becomes.
    db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    if foreign_keys:
        db.execute("PRAGMA foreign_keys=ON")
    return db
