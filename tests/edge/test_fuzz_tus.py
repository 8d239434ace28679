"""Fuzzing the tus endpoints' headers on a live edge (issue 14): generated Tus-Resumable,
Upload-Length, Upload-Offset, Upload-Metadata, Upload-Checksum, Upload-Defer-Length and
Content-Type values never get a 5xx, and every refusal is the JSON error shape, never an echo.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import string
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@contextmanager
def live_edge(data_dir: Path) -> Iterator[int]:
    """An edge (fast path in front) on its own loop in a thread, so hypothesis drives it synchronously."""
    import uvloop

    from streamgate.common.config import config_from_tree
    from streamgate.edge.server import EdgeServer

    port = free_port()
    config = config_from_tree({
        "storage": {"data_dir": str(data_dir)}, "server": {"host": "127.0.0.1", "port": port, "workers": 1},
        "auth": {"required": False}, "edge": {"rate_limit": {"enabled": False}},
        "uploads": {"max_size": "1MiB", "resubmit_interval": "1h", "sweep_interval": "1h"}})
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzzed-edge", daemon=True)
    thread.start()
    server = EdgeServer(config)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(60)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


# Header values: what clients send, what they get wrong, and what an attacker tries.
_value = (st.sampled_from(["", "0", "1", "1.0.0", "0.2.2", "-1", "+5", " 5", "5 ", "1e3", "0x10", "٣",
                           "18446744073709551616", "9" * 19, "9" * 40, "1048576", "1048577",
                           "sha1 ", "sha256 AAAA", "md5 !!", "crc32 AAAA", "application/offset+octet-stream",
                           "filename", "filename ", "filename dC5tcDQ=", "a b c", "k dA==,k dA==",
                           "title /w==", "priority OTk5OTk5OTk5OTk5", "visibility cHJpdmF0ZQ==", ",", " , "])
          | st.text(alphabet=string.printable.replace("\r", "").replace("\n", "") + "é\u00ff", max_size=40))
_HEADERS = ("Tus-Resumable", "Upload-Length", "Upload-Offset", "Upload-Metadata", "Upload-Checksum",
            "Upload-Defer-Length", "Content-Type", "Upload-Concat", "X-HTTP-Method-Override")


@st.composite
def tus_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    method = draw(st.sampled_from(["POST", "PATCH", "HEAD", "DELETE", "OPTIONS"]))
    headers = {"Tus-Resumable": "1.0.0"}
    for name in draw(st.lists(st.sampled_from(_HEADERS), max_size=5, unique=True)):
        # Bytes on the wire: a non-ASCII value arrives as its UTF-8 bytes (http.client sends Latin-1).
        value = draw(_value).encode("utf-8").decode("latin-1")
        # http.client refuses values a client cannot send (leading space, control characters).
        if value == value.strip() and all(32 <= ord(c) < 127 or ord(c) > 159 for c in value):
            headers[name] = value
    body = draw(st.binary(max_size=64))
    return method, draw(st.sampled_from(["new", "existing", "bogus"])), headers, body


def _exchange(port: int, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body if method in ("POST", "PATCH") else None, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(), response.getheader("Content-Type", "")
    finally:
        conn.close()


def _create(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/api/v1/uploads", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "100"})
        response = conn.getresponse()
        response.read()
        assert response.status == 201
        location = response.getheader("Location") or ""
    finally:
        conn.close()
    return "/" + location.split("://", 1)[-1].split("/", 1)[1]


def _fuzz(data_dir: Path, examples: int, derandomize: bool) -> None:
    with live_edge(data_dir) as port:
        existing = _create(port)

        @settings(max_examples=examples, deadline=None, derandomize=derandomize, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(tus_requests())
        def answers_without_5xx(request: tuple[str, str, dict[str, str], bytes]) -> None:
            method, target, headers, body = request
            path = {"new": "/api/v1/uploads", "existing": existing,
                    "bogus": "/api/v1/uploads/" + "0" * 32}[target]
            status, payload, content_type = _exchange(port, method, path, headers, body)
            assert status < 500, f"{method} {path} {headers}: {status} {payload[:200]!r}"
            if status >= 400 and method != "HEAD":
                assert content_type.startswith("application/json"), (status, content_type, payload[:200])
                error: Any = json.loads(payload)
                assert set(error) >= {"error", "detail"}, error
                # Never an echo of a header value an attacker chose (reflected into a page or log).
                for value in headers.values():
                    if len(value) >= 12 and value not in ("application/offset+octet-stream", "1.0.0"):
                        assert value not in error["detail"], (value, error)

        answers_without_5xx()
        # The upload the fuzzing wrote into is still well formed: HEAD answers its offset.
        status, _, _ = _exchange(port, "HEAD", existing, {"Tus-Resumable": "1.0.0"}, b"")
        assert status in (200, 404, 410)


def test_tus_headers_never_get_a_server_error(tmp_path: Path) -> None:
    _fuzz(tmp_path / "data", examples=150, derandomize=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_tus_headers_never_get_a_server_error_long(tmp_path: Path) -> None:
    _fuzz(tmp_path / "data", examples=3000, derandomize=False)
