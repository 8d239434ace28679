"""tus 1.0.0 (core, creation, termination) spoken through a locust client, step by step."""

from __future__ import annotations

import base64
from typing import Any

TUS_VERSION = "1.0.0"


def metadata(**pairs: str) -> str:
    # Upload-Metadata: comma-separated "key base64(value)" pairs (tus 1.0.0, creation extension).
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


def create(client: Any, length: int, headers: dict[str, str], **meta: str) -> str | None:
    """POST the upload; returns its URL (Location) or None after recording a failure."""
    with client.post("/api/v1/uploads", name="/api/v1/uploads (tus)", catch_response=True,
                     headers={**headers, "Tus-Resumable": TUS_VERSION, "Upload-Length": str(length),
                              "Upload-Metadata": metadata(**meta)}) as response:
        location = response.headers.get("Location")
        if response.status_code != 201 or not location:
            response.failure(f"create: {response.status_code} {response.text[:200]}")
            return None
        return location


def patch(client: Any, url: str, offset: int, chunk: bytes, headers: dict[str, str]) -> int | None:
    """PATCH one chunk at ``offset``; returns the new offset."""
    with client.request("PATCH", url, name="/api/v1/uploads/[id] (tus)", data=chunk, catch_response=True,
                        headers={**headers, "Tus-Resumable": TUS_VERSION, "Upload-Offset": str(offset),
                                 "Content-Type": "application/offset+octet-stream"}) as response:
        if response.status_code != 204:
            response.failure(f"patch at {offset}: {response.status_code} {response.text[:200]}")
            return None
        return int(response.headers.get("Upload-Offset", "-1"))


def offset(client: Any, url: str, headers: dict[str, str]) -> int | None:
    """HEAD: the server's offset, as a client resuming after a dropped connection asks."""
    with client.head(url, name="/api/v1/uploads/[id] (tus)", catch_response=True,
                     headers={**headers, "Tus-Resumable": TUS_VERSION}) as response:
        if response.status_code != 200:
            response.failure(f"head: {response.status_code}")
            return None
        return int(response.headers.get("Upload-Offset", "-1"))


def terminate(client: Any, url: str, headers: dict[str, str]) -> None:
    with client.delete(url, name="/api/v1/uploads/[id] (tus)", catch_response=True,
                       headers={**headers, "Tus-Resumable": TUS_VERSION}) as response:
        if response.status_code != 204:
            response.failure(f"terminate: {response.status_code}")
