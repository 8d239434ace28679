"""Room on the data dir for an upload: below ``storage.min_free_space`` the edge answers 507.

Checked before a byte is written (tus POST and PATCH), so a node near full refuses new bytes with
a clear status instead of filling the disk the farm, the journal and the SQLite files share. A
disk that fills anyway mid-write is the other half: ENOSPC anywhere (the partial file, a SQLite
commit: common/sqlite.StoreFull) also answers 507 (edge/errors.py).
"""

from __future__ import annotations

import shutil

from streamgate.common.config import Config
from streamgate.edge.errors import HTTPError

TUS_VERSION = "1.0.0"


def require_room(config: Config, incoming: int, **headers: str) -> None:
    """Raise 507 unless ``incoming`` more bytes leave ``storage.min_free_space`` free on the data dir."""
    if config.storage.backend == "s3":
        return  # the bytes go to the object store; the local disk only holds state
    path = config.storage.uploads_dir
    if not path.exists():
        path = config.storage.root
    free = shutil.disk_usage(path).free
    reserve = int(config.storage.min_free_space)
    if free - max(incoming, 0) < reserve:
        raise HTTPError(507, "insufficient storage",
                        f"the node is low on disk space ({free // 2**20} MiB free, {reserve // 2**20} MiB"
                        " kept in reserve); retry later",
                        {"Tus-Resumable": TUS_VERSION, "Retry-After": "60", **headers})
