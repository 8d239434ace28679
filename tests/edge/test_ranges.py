"""Range per RFC 9110 section 14 on both paths: what is ignored (200), answered (206) or refused (416)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from streamgate.edge.playback.conditional import RangeNotSatisfiable, parse_range

FAST = pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "aiohttp"])
SEG = "/videos/vid-1/240p/90.m4s"


@pytest.mark.parametrize("header", [
    "items=0-1", "bytes", "bytes=", "bytes=abc", "bytes=5-2", "bytes=0-1,4-5", "bytes=-", "bytes=1-2-3",
    "bytes=\u0661-\u0662", "bytes=0x10-", " = 0-1",
])
def test_ignored_ranges(header: str) -> None:
    assert parse_range(header, 100) is None


@pytest.mark.parametrize(("header", "want"), [
    ("bytes=0-9", (0, 10)), ("BYTES=90-", (90, 100)), ("bytes=-10", (90, 100)), ("bytes=-500", (0, 100)),
    ("bytes=95-1000", (95, 100)), ("bytes= 5-6 ,", (5, 7)),
])
def test_satisfiable_ranges(header: str, want: tuple[int, int]) -> None:
    assert parse_range(header, 100) == want


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as raised:
        parse_range(header, 100)
    assert header not in str(raised.value), "the detail does not echo the request"


@FAST
async def test_both_paths_ignore_what_they_cannot_satisfy_as_one_range(fast_path: bool, data_dir: Path,
                                                                        make_config, start_edge) -> None:
    big = (data_dir / "media" / "vid-1" / "240p" / "90.m4s").read_bytes()
    async with start_edge(make_config(data_dir, fast_path=fast_path)) as server, aiohttp.ClientSession() as client:
        url = f"http://127.0.0.1:{server.port}{SEG}"
        for _ in range(2):  # cold, then from the open-file cache
            for ignored in ("items=0-1", "bytes=abc", "bytes=5-2", "bytes=0-1,4-5", "bytes=0-1, 1000000000-"):
                async with client.get(url, headers={"Range": ignored}) as r:
                    assert r.status == 200, ignored
                    assert "Content-Range" not in r.headers
                    assert await r.read() == big
            async with client.get(url, headers={"Range": f"bytes={len(big)}-"}) as r:
                assert r.status == 416
                assert r.headers["Content-Range"] == f"bytes */{len(big)}"
                body = await r.json()
                assert set(body) == {"error", "detail"} and body["error"] == "range not satisfiable"
                assert str(len(big)) + "-" not in body["detail"], "no echo of the header"
            async with client.get(url, headers={"Range": "bytes=10-19"}) as r:
                assert r.status == 206 and await r.read() == big[10:20]
