"""The fleet backend: an S3-compatible object store (SeaweedFS, MinIO, Ceph RGW, AWS) via aiobotocore.

aiobotocore was chosen over obstore on the figures of bench/storage_client.py (docs/storage.md):
it is the one of the two that exposes the whole multipart API (an upload continued by another
process from its upload id, ListParts, ListMultipartUploads, UploadPartCopy), which resumable tus
uploads and the sweeper need.

Every call runs under ``request_timeout`` (a streamed read: per chunk); a refused or broken
connection, a timeout or a 5xx from the store raises StorageUnavailable, so callers can answer 503.
"""

from __future__ import annotations

import asyncio
import configparser
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

from streamgate.common.storage.base import (
    MultipartUpload,
    ObjectInfo,
    ObjectNotFound,
    PartInfo,
    StorageError,
    StorageUnavailable,
    UploadNotFound,
    check_key,
    check_parts,
    check_prefix,
    clip_range,
)

T = TypeVar("T")
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_UNAVAILABLE = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500", "502", "504"}
# Uploads of put_file in flight at once; more buys nothing on one link and costs memory (parts).
_PUT_CONCURRENCY = 4
_DOWNLOAD_CHUNK = 1 << 20


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _etag(value: str) -> str:
    return value.strip('"')


def read_credentials_file(path: str | os.PathLike[str]) -> tuple[str, str]:
    """The ``[default]`` keys of an AWS shared-credentials file."""
    parser = configparser.ConfigParser()
    if not parser.read(path):
        raise StorageError(f"storage.s3.credentials_file: cannot read {path}")
    section = parser["default"] if parser.has_section("default") else None
    if section is None or "aws_access_key_id" not in section or "aws_secret_access_key" not in section:
        raise StorageError(f"storage.s3.credentials_file: {path} has no [default] aws_access_key_id "
                           "and aws_secret_access_key")
    return section["aws_access_key_id"], section["aws_secret_access_key"]


class S3Stream:
    """The body of one GetObject, read in chunks, each under the request timeout."""

    def __init__(self, body: Any, info: ObjectInfo, start: int, end: int, chunk_size: int,
                 timeout: float) -> None:
        self._body = body
        self.info = info
        self.start = start
        self.end = end
        self._chunk = chunk_size
        self._timeout = timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    data = await self._body.read(self._chunk)
            except (TimeoutError, aiohttp.ClientError, BotoCoreError) as exc:
                raise StorageUnavailable(f"reading {self.info.key}: {exc!r}") from exc
            if not data:
                return
            yield data

    async def aclose(self) -> None:
        self._body.close()

    async def __aenter__(self) -> S3Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class S3Store:
    name = "s3"

    def __init__(self, client: Any, exit_stack: AsyncExitStack, *, bucket: str, prefix: str,
                 part_size: int, request_timeout: float) -> None:
        self._client = client
        self._exit = exit_stack
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.part_size = part_size
        self.timeout = request_timeout

    @classmethod
    async def open(cls, *, endpoint: str, bucket: str, region: str, prefix: str = "",
                   access_key_id: str = "", secret_access_key: str = "", credentials_file: str = "",
                   part_size: int = 8 * 2**20, connect_timeout: float = 5.0,
                   request_timeout: float = 30.0, create_bucket: bool = False) -> S3Store:
        if not (access_key_id and secret_access_key) and credentials_file:
            access_key_id, secret_access_key = read_credentials_file(credentials_file)
        keys = {"aws_access_key_id": access_key_id, "aws_secret_access_key": secret_access_key} if (
            access_key_id and secret_access_key) else {}  # none: botocore's own chain (instance roles)
        config = AioConfig(
            connect_timeout=connect_timeout, read_timeout=request_timeout,
            # Standard retries (3 attempts, jittered backoff) inside the caller's overall timeout.
            retries={"max_attempts": 3, "mode": "standard"},
            # Path style: SeaweedFS, MinIO and RGW behind one host name have no per-bucket DNS.
            s3={"addressing_style": "path"},
            # Edges fetch many segments at once; botocore's default pool of 10 would queue them.
            max_pool_connections=64,
            # Only what S3 requires: newer botocore adds CRC checksums some S3 servers refuse.
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        stack = AsyncExitStack()
        client = await stack.enter_async_context(get_session().create_client(
            "s3", endpoint_url=endpoint or None, region_name=region, config=config, **keys))
        store = cls(client, stack, bucket=bucket, prefix=check_prefix(prefix.strip("/")),
                    part_size=part_size, request_timeout=request_timeout)
        try:
            if create_bucket:
                await store._ensure_bucket()
        except BaseException:
            await stack.aclose()
            raise
        return store

    async def _ensure_bucket(self) -> None:
        try:
            await self._call("head_bucket", Bucket=self.bucket)
        except ObjectNotFound:
            try:
                await self._call("create_bucket", Bucket=self.bucket)
            except StorageError as exc:
                if "BucketAlreadyOwnedByYou" not in str(exc):
                    raise

    # -- one call ------------------------------------------------------------------------------

    async def _call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        return await self._guard(op, kwargs.get("Key", ""), lambda: getattr(self._client, op)(**kwargs))

    async def _guard(self, op: str, key: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await call()
        except ClientError as exc:
            code = _code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "NoSuchUpload":
                raise UploadNotFound(f"{op} {key}: no such multipart upload") from None
            if code in _NOT_FOUND or code == "NoSuchBucket" and op == "head_bucket":
                raise ObjectNotFound(key or self.bucket) from None
            if code in _UNAVAILABLE or status >= 500:
                raise StorageUnavailable(f"{op} {key}: the store answered {code or status}") from exc
            raise StorageError(f"{op} {key}: {code}: {exc}") from exc
        except (TimeoutError, ConnectionError, HTTPClientError, aiohttp.ClientError, OSError) as exc:
            raise StorageUnavailable(f"{op} {key}: store unreachable or too slow: {exc!r}") from exc

    def _full(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _rel(self, full: str) -> str:
        return full[len(self.prefix):]

    # -- whole objects -------------------------------------------------------------------------

    async def put(self, key: str, data: bytes | Path) -> str:
        if isinstance(data, Path):
            return await self.put_file(key, data)
        reply = await self._call("put_object", Bucket=self.bucket, Key=self._full(key), Body=bytes(data))
        return _etag(reply["ETag"])

    async def put_file(self, key: str, path: Path) -> str:
        size = (await asyncio.to_thread(os.stat, path)).st_size
        if size <= self.part_size:
            data = await asyncio.to_thread(Path(path).read_bytes)
            return await self.put(key, data)
        upload_id = await self.create_multipart(key)
        try:
            gate = asyncio.Semaphore(_PUT_CONCURRENCY)

            async def part(number: int) -> PartInfo:
                async with gate:
                    offset = (number - 1) * self.part_size
                    data = await asyncio.to_thread(_read_at, path, offset, self.part_size)
                    return await self.upload_part(key, upload_id, number, data)

            count = -(-size // self.part_size)
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(part(n)) for n in range(1, count + 1)]
            return await self.complete_multipart(key, upload_id, [t.result() for t in tasks])
        except BaseException:
            await asyncio.shield(self._abort_quietly(key, upload_id))
            raise

    async def _abort_quietly(self, key: str, upload_id: str) -> None:
        try:
            await self.abort_multipart(key, upload_id)
        except StorageError:
            pass  # the sweeper aborts what is left (list_multipart_uploads)

    def _range_header(self, start: int | None, end: int | None) -> str | None:
        if start is not None and start < 0:
            if end is not None:
                raise StorageError("a suffix range (negative start) takes no end")
            return f"bytes={start}"
        if start is None and end is None:
            return None
        return f"bytes={start or 0}-{'' if end is None else end - 1}"

    async def _get_object(self, key: str, start: int | None, end: int | None) -> tuple[dict[str, Any], int, int, int]:
        """GetObject of a range: (reply, first byte, one past the last, object size)."""
        if start is not None and start >= 0 and end is not None and end <= start:
            info = await self.head(key)
            if info is None:
                raise ObjectNotFound(key)
            lo = min(start, info.size)
            return {}, lo, lo, info.size
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}
        header = self._range_header(start, end)
        if header:
            kwargs["Range"] = header
        try:
            reply = await self._call("get_object", **kwargs)
        except StorageError as exc:
            if "InvalidRange" not in str(exc):
                raise
            # A start at or past the end: empty, as a slice would be (416 for HTTP callers to make).
            info = await self.head(key)
            if info is None:
                raise ObjectNotFound(key) from None
            return {}, info.size, info.size, info.size
        content_range = reply.get("ContentRange")
        length = int(reply["ContentLength"])
        if content_range:  # "bytes 0-99/1234"
            span, _, total = content_range.removeprefix("bytes ").partition("/")
            first = int(span.split("-")[0])
            return reply, first, first + length, int(total)
        return reply, 0, length, length

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        reply, lo, hi, _ = await self._get_object(key, start, end)
        if not reply:
            return b""
        body = reply["Body"]
        try:
            async with asyncio.timeout(self.timeout):
                return await body.read()
        except (TimeoutError, aiohttp.ClientError, BotoCoreError) as exc:
            raise StorageUnavailable(f"get {key}: {exc!r}") from exc
        finally:
            body.close()

    async def open_read(self, key: str, start: int | None = None, end: int | None = None,
                        chunk_size: int = 256 * 1024) -> S3Stream:
        reply, lo, hi, size = await self._get_object(key, start, end)
        if not reply:
            info = await self.head(key)
            assert info is not None
            return S3Stream(_EmptyBody(), info, lo, hi, chunk_size, self.timeout)
        info = ObjectInfo(key=key, size=size, etag=_etag(reply["ETag"]), mtime=reply["LastModified"].timestamp())
        return S3Stream(reply["Body"], info, lo, hi, chunk_size, self.timeout)

    async def download(self, key: str, path: Path) -> ObjectInfo:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.sg-tmp")
        try:
            async with await self.open_read(key, chunk_size=_DOWNLOAD_CHUNK) as stream:
                out = await asyncio.to_thread(open, tmp, "wb")
                try:
                    async for chunk in stream:
                        await asyncio.to_thread(out.write, chunk)
                    await asyncio.to_thread(_flush_sync, out)
                finally:
                    out.close()
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return stream.info

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            reply = await self._call("head_object", Bucket=self.bucket, Key=self._full(key))
        except ObjectNotFound:
            return None
        return ObjectInfo(key=key, size=int(reply["ContentLength"]), etag=_etag(reply["ETag"]),
                          mtime=reply["LastModified"].timestamp())

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:  # type: ignore[override]
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + check_prefix(prefix)}
        while True:
            page = await self._call("list_objects_v2", **kwargs)
            for item in page.get("Contents", []):
                yield ObjectInfo(key=self._rel(item["Key"]), size=int(item["Size"]),
                                 etag=_etag(item.get("ETag", "")), mtime=item["LastModified"].timestamp())
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    async def delete(self, key: str) -> None:
        await self._call("delete_object", Bucket=self.bucket, Key=self._full(key))

    async def delete_prefix(self, prefix: str) -> int:
        removed = 0
        batch: list[dict[str, str]] = []

        async def flush() -> None:
            nonlocal removed
            reply = await self._call("delete_objects", Bucket=self.bucket,
                                     Delete={"Objects": batch, "Quiet": True})
            if reply.get("Errors"):
                raise StorageError(f"delete_prefix {prefix}: {reply['Errors'][:3]}")
            removed += len(batch)
            batch.clear()

        async for info in self.list(prefix):
            batch.append({"Key": self._full(info.key)})
            if len(batch) == 1000:  # DeleteObjects takes at most 1000 keys
                await flush()
        if batch:
            await flush()
        return removed

    # -- multipart -----------------------------------------------------------------------------

    async def create_multipart(self, key: str) -> str:
        reply = await self._call("create_multipart_upload", Bucket=self.bucket, Key=self._full(key))
        return str(reply["UploadId"])

    async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> PartInfo:
        reply = await self._call("upload_part", Bucket=self.bucket, Key=self._full(key), UploadId=upload_id,
                                 PartNumber=part_number, Body=bytes(data))
        return PartInfo(part_number=part_number, etag=_etag(reply["ETag"]), size=len(data))

    async def upload_part_copy(self, key: str, upload_id: str, part_number: int, source_key: str,
                               start: int | None = None, end: int | None = None) -> PartInfo:
        source = await self.head(source_key)
        if source is None:
            raise ObjectNotFound(source_key)
        lo, hi = clip_range(source.size, start, end)
        if hi <= lo:
            raise StorageError(f"upload_part_copy {source_key}: empty range")
        reply = await self._call("upload_part_copy", Bucket=self.bucket, Key=self._full(key),
                                 UploadId=upload_id, PartNumber=part_number,
                                 CopySource={"Bucket": self.bucket, "Key": self._full(source_key)},
                                 CopySourceRange=f"bytes={lo}-{hi - 1}")
        return PartInfo(part_number=part_number, etag=_etag(reply["CopyPartResult"]["ETag"]), size=hi - lo)

    async def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        parts: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key), "UploadId": upload_id}
        while True:
            page = await self._call("list_parts", **kwargs)
            parts.extend(page.get("Parts", []))
            if not page.get("IsTruncated"):
                break
            kwargs["PartNumberMarker"] = page["NextPartNumberMarker"]
        # SeaweedFS (4.48) lists a part uploaded twice under both ETags, in no telling order and
        # with one-second LastModified: keep the newest, ties to the first listed. Callers that
        # replace parts keep the PartInfo upload_part returned and complete with that.
        newest: dict[int, dict[str, Any]] = {}
        for p in parts:
            n = int(p["PartNumber"])
            if n not in newest or p["LastModified"] > newest[n]["LastModified"]:
                newest[n] = p
        return [PartInfo(part_number=n, etag=_etag(p["ETag"]), size=int(p["Size"]))
                for n, p in sorted(newest.items())]

    async def complete_multipart(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> str:
        check_parts(parts)
        reply = await self._call(
            "complete_multipart_upload", Bucket=self.bucket, Key=self._full(key), UploadId=upload_id,
            MultipartUpload={"Parts": [{"ETag": f'"{p.etag}"', "PartNumber": p.part_number} for p in parts]})
        return _etag(reply["ETag"])

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            await self._call("abort_multipart_upload", Bucket=self.bucket, Key=self._full(key),
                             UploadId=upload_id)
        except ObjectNotFound:
            pass

    async def list_multipart_uploads(self, prefix: str = "") -> AsyncIterator[MultipartUpload]:  # type: ignore[override]
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + check_prefix(prefix)}
        while True:
            page = await self._call("list_multipart_uploads", **kwargs)
            for u in page.get("Uploads", []):
                yield MultipartUpload(key=self._rel(u["Key"]), upload_id=u["UploadId"],
                                      initiated=u["Initiated"].timestamp())
            if not page.get("IsTruncated"):
                return
            kwargs["KeyMarker"] = page.get("NextKeyMarker", "")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

    async def close(self) -> None:
        await self._exit.aclose()


class _EmptyBody:
    async def read(self, n: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), size, offset)


def _flush_sync(out: Any) -> None:
    out.flush()
    os.fsync(out.fileno())
