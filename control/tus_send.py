"""A tus 1.0 client for ``streamgate upload``: one upload's PATCHes over one kept-alive connection.

tuspy opens a new connection for every PATCH (``requests.patch``) and reads and hashes each chunk
before it sends it, so the CPU and the network take turns. Here the next chunk is read and hashed
(sha256, which hashlib computes with the CPU's SHA extensions where it has them) in a thread while
the current one is on the wire and the edge makes it durable. A failed PATCH is retried from the
offset a HEAD reports, as tuspy does.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import requests

from streamgate.control.edge_client import EdgeAPIError

TUS = {"Tus-Resumable": "1.0.0"}
# Each PATCH ends in a disk barrier on the edge (its fdatasync and the saved offset): fewer, larger
# PATCHes pay fewer of them. Two chunks per upload are in memory at once.
CHUNK = 16 * 2**20
RETRIES = 3
RETRY_DELAY_S = 1.0


class TusError(EdgeAPIError):
    """The edge refused a tus request (``status``), or did not answer as tus says."""

    def __init__(self, what: str, status: int | None = None, text: str = "") -> None:
        super().__init__(f"{what}: {status} {text[:200]}" if status is not None else what)
        self.status = status


def encode_metadata(metadata: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in metadata.items())


def create(session: requests.Session, endpoint: str, length: int, headers: dict[str, str],
           metadata: dict[str, str] | None = None) -> str:
    """POST the upload; its absolute URL (TusError with the status when refused)."""
    extra = {"Upload-Metadata": encode_metadata(metadata)} if metadata else {}
    r = session.post(endpoint, headers={**headers, **TUS, "Upload-Length": str(length), **extra}, timeout=600)
    if r.status_code != 201 or "Location" not in r.headers:
        raise TusError("POST " + endpoint, r.status_code, r.text)
    return requests.compat.urljoin(endpoint, r.headers["Location"])


class Source(Protocol):
    """What a sender reads a part from: a file, or a slice of one (control/commands/upload.py)."""

    def seek(self, offset: int, whence: int = ..., /) -> int: ...

    def read(self, size: int = ..., /) -> bytes | None: ...


class Sender:
    """Sends ``length`` bytes of ``stream`` (from its start) to the upload at ``url``."""

    def __init__(self, session: requests.Session, url: str, stream: Source, length: int,
                 headers: dict[str, str], chunk: int = CHUNK) -> None:
        self.session, self.url, self.stream, self.length = session, url, stream, length
        self.headers = headers
        self.chunk = chunk
        self.offset = 0

    def _read(self, offset: int) -> tuple[int, bytes, str]:
        self.stream.seek(offset)
        # A raw stream answers None only when non-blocking; files and slices never are.
        data = self.stream.read(min(self.chunk, self.length - offset)) or b""
        return offset, data, base64.b64encode(hashlib.sha256(data).digest()).decode()

    def _head(self) -> int:
        r = self.session.head(self.url, headers={**self.headers, **TUS}, timeout=60)
        if r.status_code != 200:
            raise TusError("HEAD " + self.url, r.status_code, r.text)
        return int(r.headers["Upload-Offset"])

    def _patch(self, offset: int, data: bytes, digest: str) -> int:
        r = self.session.patch(self.url, data=data, timeout=600, headers={
            **self.headers, **TUS, "Upload-Offset": str(offset), "Upload-Checksum": f"sha256 {digest}",
            "Content-Type": "application/offset+octet-stream"})
        if r.status_code != 204:
            raise TusError(f"PATCH {self.url} at {offset}", r.status_code, r.text)
        return int(r.headers["Upload-Offset"])

    def send(self, progress: Callable[[int], Any] = lambda offset: None) -> None:
        retried = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tus-read") as reader:
            ahead: Future[tuple[int, bytes, str]] | None = None
            while self.offset < self.length:
                if ahead is None or ahead.result()[0] != self.offset:
                    ahead = reader.submit(self._read, self.offset)
                offset, data, digest = ahead.result()
                end = offset + len(data)
                ahead = reader.submit(self._read, end) if end < self.length else None
                try:
                    self.offset = self._patch(offset, data, digest)
                    retried = 0
                except (requests.RequestException, TusError) as exc:
                    if retried >= RETRIES or (isinstance(exc, TusError) and exc.status in (401, 403, 404, 410, 413)):
                        raise
                    retried += 1
                    time.sleep(RETRY_DELAY_S)  # then resume where the edge says it stands
                    try:
                        self.offset = self._head()
                    except (requests.RequestException, TusError):
                        continue  # the next try sends from where we were (409 tells otherwise)
                progress(self.offset)
