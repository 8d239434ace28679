"""Where an upload's bytes live on this host: the partial file while it arrives, the source after."""

from __future__ import annotations

import re
from pathlib import Path

from streamgate.common.config import Config

_EXTENSION = re.compile(r"\A[a-z0-9]{1,8}\Z")


def source_extension(filename: str) -> str:
    ext = Path(filename).suffix.lower().lstrip(".")
    return ext if _EXTENSION.match(ext) else "bin"


def partial_path(config: Config, upload_id: str) -> Path:
    return config.storage.uploads_dir / f"{upload_id}.part"


def source_path(config: Config, video_id: str, filename: str) -> Path:
    return config.storage.sources_dir / video_id / f"source.{source_extension(filename)}"
