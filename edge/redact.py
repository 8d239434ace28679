"""Server paths out of what clients read: farm failure reasons and error details (issue 14).

A reason such as ``cannot open /srv/data/sources/<id>/source.bin`` tells a client where the data
dir is; the file's name alone says as much as the client needs. The edge's own URL paths
(``/api/v1/...``, ``/videos/...``) are addresses clients already use and stay.
"""

from __future__ import annotations

import re

# The edge's public routes: never rewritten.
_PUBLIC_ROOTS = ("/api/", "/videos/", "/s/", "/web/", "/health", "/metrics")
# A file or ipc URL, or an absolute path of two or more parts not inside a URL or a word
# ("http://host/a/b" and "a/b/c" are left alone).
_PATH = re.compile(r"\b(?:file|ipc)://[^\s'\"(),;]+|(?<![\w:/.~-])(?:/[^\s/'\"(),;:]+){2,}/?")


def _basename(match: re.Match[str]) -> str:
    path = match.group(0)
    if path.startswith(_PUBLIC_ROOTS):
        return path
    return path.rstrip("/").rsplit("/", 1)[-1] or "…"


def strip_paths(text: str) -> str:
    """``text`` with every server path replaced by its last part."""
    return _PATH.sub(_basename, text) if "/" in text else text
