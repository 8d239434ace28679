"""tus ``Upload-Metadata``: the header's pairs, and the video fields an upload carries in them."""

from __future__ import annotations

import base64
import binascii
import os
import re
import unicodedata
from pathlib import Path
from typing import Any

from streamgate.common.config import Config

_METADATA_KEY = re.compile(r"\A[^\s,]+\Z")


def parse_metadata(header: str) -> dict[str, str]:
    """``key base64,key base64`` -> {key: base64 as sent}; raises ValueError naming the fault."""
    pairs: dict[str, str] = {}
    if not header.strip():
        return pairs
    for item in header.split(","):
        parts = item.strip().split(" ")
        key, value = parts[0], parts[1] if len(parts) > 1 else ""
        if len(parts) > 2 or not _METADATA_KEY.match(key):
            raise ValueError(f"bad Upload-Metadata pair {item.strip()!r}")
        if key in pairs:
            raise ValueError(f"Upload-Metadata key {key!r} appears twice")
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"Upload-Metadata value of {key!r} is not Base64") from None
        pairs[key] = value
    return pairs


def metadata_text(metadata: dict[str, str], key: str) -> str:
    try:
        return base64.b64decode(metadata.get(key, "")).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"Upload-Metadata {key!r} is not UTF-8 text") from None


def _printable(key: str, text: str) -> str:
    """Refuse C0/C1 control characters (NUL, newlines, escapes, DEL): a title or file name is shown
    in terminals, logs and pages, where they forge lines or colours (issue 14)."""
    bad = next((ch for ch in text if unicodedata.category(ch) == "Cc"), None)
    if bad is not None:
        raise ValueError(f"Upload-Metadata {key!r} contains the control character U+{ord(bad):04X}")
    return text


def video_fields(metadata: dict[str, str], config: Config) -> dict[str, Any]:
    """filename, title, visibility and priority (bounded by uploads.max_priority) from the metadata."""
    filename = os.path.basename(_printable("filename", metadata_text(metadata, "filename")))
    title = _printable("title", metadata_text(metadata, "title")) or Path(filename).stem or "untitled"
    visibility = metadata_text(metadata, "visibility") or "public"
    if visibility not in ("public", "private"):
        raise ValueError("Upload-Metadata visibility must be 'public' or 'private'")
    raw_priority = metadata_text(metadata, "priority").strip()
    if raw_priority and not re.fullmatch(r"-?[0-9]{1,9}", raw_priority):
        raise ValueError("Upload-Metadata priority must be an integer")
    priority = int(raw_priority) if raw_priority else config.uploads.default_priority
    priority = max(0, min(priority, config.uploads.max_priority))
    return {"filename": filename, "title": title[:500], "visibility": visibility, "priority": priority}
