"""The ObjectStore contract, one suite run on both backends: disk in tmp_path, S3 on a real SeaweedFS."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from storage_support import SeaweedFS

from streamgate.common.config import config_from_tree, load_config
from streamgate.common.storage import (
    MIN_PART_SIZE,
    ObjectNotFound,
    ObjectStore,
    ObjectStream,
    PartInfo,
    StorageError,
    StorageUnavailable,
    UploadNotFound,
    open_store,
)

MiB = 2**20


@pytest.fixture(params=["disk", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    if request.param == "disk":
        tree = {"storage": {"backend": "disk", "data_dir": str(tmp_path / "data")}}
    else:
        server: SeaweedFS = request.getfixturevalue("seaweedfs")
        # A prefix per test: tests share the session's bucket and must not see each other's keys.
        tree = {"storage": server.storage_tree(prefix=f"t/{uuid.uuid4().hex[:12]}")}
    s = await open_store(config_from_tree(tree))
    try:
        yield s
    finally:
        await s.close()


def blob(size: int, seed: int = 0) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]


async def test_put_get_and_ranges(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)
    data = blob(100_000)
    etag = await store.put("media/v1/720p/seg-1.m4s", data)
    assert etag
    assert await store.get("media/v1/720p/seg-1.m4s") == data
    assert await store.get("media/v1/720p/seg-1.m4s", 0, 1) == data[:1]  # first byte
    assert await store.get("media/v1/720p/seg-1.m4s", len(data) - 1) == data[-1:]  # last byte
    assert await store.get("media/v1/720p/seg-1.m4s", 1000, 5000) == data[1000:5000]  # middle
    assert await store.get("media/v1/720p/seg-1.m4s", -300) == data[-300:]  # suffix (bytes=-300)
    assert await store.get("media/v1/720p/seg-1.m4s", 99_000, 10**9) == data[99_000:]  # clipped
    assert await store.get("media/v1/720p/seg-1.m4s", len(data)) == b""  # past the end
    assert await store.get("media/v1/720p/seg-1.m4s", None, 10) == data[:10]
    assert await store.get("media/v1/720p/seg-1.m4s", None, 0) == b""
    assert await store.get("media/v1/720p/seg-1.m4s", 50, 40) == b""
    info = await store.head("media/v1/720p/seg-1.m4s")
    assert info is not None and info.size == len(data) and info.etag == etag
    assert abs(info.mtime - time.time()) < 120
    # Replacing an object changes its ETag.
    assert await store.put("media/v1/720p/seg-1.m4s", data[:10]) != etag


async def test_missing_objects(store: ObjectStore, tmp_path: Path) -> None:
    assert await store.head("media/nothing/here") is None
    with pytest.raises(ObjectNotFound):
        await store.get("media/nothing/here")
    with pytest.raises(ObjectNotFound):
        await store.get("media/nothing/here", 0, 10)
    with pytest.raises(ObjectNotFound):
        await store.open_read("media/nothing/here")
    with pytest.raises(ObjectNotFound):
        await store.download("media/nothing/here", tmp_path / "never" / "written")
    assert not (tmp_path / "never").exists()
    await store.delete("media/nothing/here")  # deleting a missing object is not an error


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a/../b", "a//b", "nul\0byte", "", "a/./b"])
async def test_bad_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(StorageError):
        await store.put(key, b"x")


async def test_streaming_read_and_download(store: ObjectStore, tmp_path: Path) -> None:
    data = blob(3 * MiB + 17, seed=1)
    await store.put("sources/v2/source.mp4", data)
    async with await store.open_read("sources/v2/source.mp4", chunk_size=64 * 1024) as stream:
        assert isinstance(stream, ObjectStream)
        assert stream.info.size == len(data)
        assert (stream.start, stream.end) == (0, len(data))
        chunks = [c async for c in stream]
    assert b"".join(chunks) == data and len(chunks) > 1
    async with await store.open_read("sources/v2/source.mp4", 1_000_000, 2_000_000) as stream:
        assert (stream.start, stream.end, stream.info.size) == (1_000_000, 2_000_000, len(data))
        assert b"".join([c async for c in stream]) == data[1_000_000:2_000_000]
    target = tmp_path / "scratch" / "source.mp4"
    info = await store.download("sources/v2/source.mp4", target)
    assert target.read_bytes() == data and info.size == len(data)
    assert [p.name for p in target.parent.iterdir()] == ["source.mp4"]  # no temporary left


async def test_put_file_small_and_multipart(store: ObjectStore, tmp_path: Path) -> None:
    small = tmp_path / "small.bin"
    small.write_bytes(blob(1000, seed=2))
    await store.put_file("uploads/u1/small", small)
    assert await store.get("uploads/u1/small") == small.read_bytes()
    big = tmp_path / "big.bin"
    big.write_bytes(blob(17 * MiB + 5, seed=3))  # three 8 MiB parts, the last short
    await store.put_file("uploads/u1/big", big)
    info = await store.head("uploads/u1/big")
    assert info is not None and info.size == big.stat().st_size
    assert hashlib.sha256(await store.get("uploads/u1/big")).digest() == hashlib.sha256(big.read_bytes()).digest()
    assert [u async for u in store.list_multipart_uploads("uploads/u1/")] == []


async def test_list_with_prefix_and_pages(store: ObjectStore) -> None:
    # 1100 keys: past S3's 1000-key page, so the continuation is exercised.
    keys = [f"media/v3/360p/seg-{i:05d}.m4s" for i in range(1100)]
    gate = asyncio.Semaphore(32)

    async def put(key: str) -> None:
        async with gate:
            await store.put(key, key.encode())

    await asyncio.gather(*(put(k) for k in keys))
    await store.put("media/v30/other", b"x")
    await store.put("media/v3/master.m3u8", b"#EXTM3U\n")
    listed = [i async for i in store.list("media/v3/360p/")]
    assert [i.key for i in listed] == keys
    assert all(i.size == len(i.key) for i in listed)
    # A prefix is a string prefix, not a directory: "media/v3" also matches "media/v30/...".
    assert {i.key for i in [i async for i in store.list("media/v3")]} >= {"media/v30/other", "media/v3/master.m3u8"}
    assert [i.key for i in [i async for i in store.list("media/v3/3")]][:1] == [keys[0]]
    assert await store.delete_prefix("media/v3/") == 1101
    assert [i async for i in store.list("media/v3/")] == []
    assert await store.head("media/v30/other") is not None
    await store.delete("media/v30/other")
    assert await store.head("media/v30/other") is None


async def test_multipart_completes_byte_identical(store: ObjectStore) -> None:
    key = "sources/v4/source.mp4"
    pieces = [blob(MIN_PART_SIZE, seed=10), blob(MIN_PART_SIZE, seed=11), blob(123_457, seed=12)]
    upload_id = await store.create_multipart(key)
    # Parts may arrive out of order and be sent again (a retried PATCH): the last one counts.
    p3 = await store.upload_part(key, upload_id, 3, pieces[2])
    wrong = await store.upload_part(key, upload_id, 1, b"wrong" * 1000)
    p2 = await store.upload_part(key, upload_id, 2, pieces[1])
    listed = await store.list_parts(key, upload_id)
    assert [(p.part_number, p.etag, p.size) for p in listed] == [
        (p.part_number, p.etag, p.size) for p in (wrong, p2, p3)]
    p1 = await store.upload_part(key, upload_id, 1, pieces[0])
    assert (p1.size, p3.size) == (MIN_PART_SIZE, 123_457) and p1.etag != wrong.etag
    # SeaweedFS 4.48 lists a replaced part twice, so completion uses what upload_part returned.
    assert [p.part_number for p in await store.list_parts(key, upload_id)][-2:] == [2, 3]
    assert await store.head(key) is None  # nothing visible before completion
    etag = await store.complete_multipart(key, upload_id, [p1, p2, p3])
    got = await store.get(key)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(b"".join(pieces)).hexdigest()
    info = await store.head(key)
    assert info is not None and info.etag == etag and info.size == sum(map(len, pieces))
    assert [u async for u in store.list_multipart_uploads("sources/v4/")] == []
    with pytest.raises(UploadNotFound):
        await store.list_parts(key, upload_id)


async def test_multipart_refuses_small_inner_parts(store: ObjectStore) -> None:
    key = "sources/v5/source.mp4"
    upload_id = await store.create_multipart(key)
    a = await store.upload_part(key, upload_id, 1, b"a" * 1000)
    b = await store.upload_part(key, upload_id, 2, b"b" * 1000)
    with pytest.raises(StorageError):
        await store.complete_multipart(key, upload_id, [a, b])
    await store.abort_multipart(key, upload_id)


async def test_abort_and_open_uploads_listing(store: ObjectStore) -> None:
    before = time.time()
    key = "uploads/u6/data"
    upload_id = await store.create_multipart(key)
    await store.upload_part(key, upload_id, 1, blob(1000))
    other = await store.create_multipart("sources/u6/other")
    uploads = [u async for u in store.list_multipart_uploads("uploads/")]
    assert [(u.key, u.upload_id) for u in uploads] == [(key, upload_id)]
    # Second resolution on S3 (ISO 8601 timestamps), so a little slack each way.
    assert before - 2 <= uploads[0].initiated <= time.time() + 2
    await store.abort_multipart(key, upload_id)
    assert [u async for u in store.list_multipart_uploads("uploads/")] == []
    with pytest.raises(UploadNotFound):
        await store.upload_part(key, upload_id, 2, b"late")
    await store.abort_multipart(key, upload_id)  # again: not an error
    assert await store.head(key) is None
    await store.abort_multipart("sources/u6/other", other)


async def test_upload_part_copy_assembles_server_side(store: ObjectStore) -> None:
    first = blob(MIN_PART_SIZE + 1000, seed=20)
    second = blob(2 * MIN_PART_SIZE, seed=21)
    await store.put("uploads/u7/a", first)
    await store.put("uploads/u7/b", second)
    key = "sources/u7/joined"
    upload_id = await store.create_multipart(key)
    parts: list[PartInfo] = [
        await store.upload_part_copy(key, upload_id, 1, "uploads/u7/a"),
        await store.upload_part_copy(key, upload_id, 2, "uploads/u7/b", 0, MIN_PART_SIZE),
        await store.upload_part(key, upload_id, 3, b"tail"),
    ]
    assert [p.size for p in parts] == [len(first), MIN_PART_SIZE, 4]
    await store.complete_multipart(key, upload_id, parts)
    assert await store.get(key) == first + second[:MIN_PART_SIZE] + b"tail"
    with pytest.raises(ObjectNotFound):
        other = await store.create_multipart("sources/u7/never")
        try:
            await store.upload_part_copy("sources/u7/never", other, 1, "uploads/u7/missing")
        finally:
            await store.abort_multipart("sources/u7/never", other)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_store_down_raises_unavailable_within_timeout(seaweedfs: SeaweedFS) -> None:
    # A port nothing listens on: connections are refused (and retried) until the call's deadline.
    tree = seaweedfs.storage_tree(connect_timeout="1s", request_timeout="2s")
    tree["s3"]["endpoint"] = f"http://127.0.0.1:{closed_port()}"
    store = await open_store(config_from_tree({"storage": tree}))
    try:
        for call in (store.get("media/x"), store.head("media/x"), store.put("media/x", b"x"),
                     store.create_multipart("media/x")):
            started = time.monotonic()
            with pytest.raises(StorageUnavailable) as caught:
                await call
            assert time.monotonic() - started < 2 + 1.5
            assert caught.value.retry_after > 0
    finally:
        await store.close()


async def test_store_that_does_not_answer_times_out(seaweedfs: SeaweedFS) -> None:
    # A listener that accepts and never answers: a slow store, not a refused one.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        tree = seaweedfs.storage_tree(connect_timeout="1s", request_timeout="1s")
        tree["s3"]["endpoint"] = f"http://127.0.0.1:{server.getsockname()[1]}"
        store = await open_store(config_from_tree({"storage": tree}))
        try:
            started = time.monotonic()
            with pytest.raises(StorageUnavailable):
                await store.get("media/x")
            assert time.monotonic() - started < 1 + 1.5
        finally:
            await store.close()
    finally:
        server.close()


def test_config_of_the_s3_backend(tmp_path: Path) -> None:
    env = {"AWS_ACCESS_KEY_ID": "0123", "AWS_SECRET_ACCESS_KEY": "00777", "AWS_REGION": "eu-west-1",
           "S3_ENDPOINT": "http://10.0.0.5:8333", "S3_BUCKET": "videos",
           "STREAMGATE__STORAGE__BACKEND": "s3"}
    config = load_config(None, env=env)
    s3 = config.storage.s3
    assert config.storage.backend == "s3"
    # Keys stay text: a secret of digits must not become the number 777.
    assert (s3.access_key_id, s3.secret_access_key, s3.region) == ("0123", "00777", "eu-west-1")
    assert (s3.endpoint, s3.bucket, int(s3.part_size)) == ("http://10.0.0.5:8333", "videos", 8 * MiB)
    from streamgate.common.config import ConfigError

    with pytest.raises(ConfigError, match="storage.s3.part_size"):
        config_from_tree({"storage": {"s3": {"part_size": "4MiB"}}})
    with pytest.raises(ConfigError, match="storage.s3.bucket"):
        config_from_tree({"storage": {"backend": "s3"}})
    assert config_from_tree({}).storage.backend == "disk"


async def test_credentials_file(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = {seaweedfs.access_key_id}\n"
                     f"aws_secret_access_key = {seaweedfs.secret_access_key}\n")
    os.chmod(creds, 0o600)
    tree = seaweedfs.storage_tree(prefix=f"t/{uuid.uuid4().hex[:12]}", credentials_file=str(creds))
    tree["s3"].update(access_key_id="", secret_access_key="")
    store = await open_store(config_from_tree({"storage": tree}))
    try:
        await store.put("media/c", b"signed with the file's keys")
        assert await store.get("media/c") == b"signed with the file's keys"
    finally:
        await store.close()
    tree["s3"]["credentials_file"] = ""
    tree["s3"]["secret_access_key"] = "wrong"
    tree["s3"]["access_key_id"] = seaweedfs.access_key_id
    store = await open_store(config_from_tree({"storage": tree}))
    try:
        with pytest.raises(StorageError) as caught:
            await store.put("media/c", b"x")
        assert not isinstance(caught.value, StorageUnavailable)  # refused, not down
    finally:
        await store.close()
