"""The fleet backend: an S3-compatible object store (SeaweedFS, MinIO, Ceph RGW, AWS).

Two clients, each where bench/storage_client.py measured it best (docs/storage.md has the
figures): obstore (Rust, object_store) for whole-object reads and writes, the hot path of edges
and farms, at about a third of aiobotocore's CPU per request and 4-5x its concurrent GET rate; aiobotocore
for what obstore does not offer: multipart by upload id (an upload continued by another process),
ListParts, ListMultipartUploads, UploadPartCopy, and listing and batch deletes.

Every call runs under ``request_timeout`` (a streamed read: per chunk); a refused or broken
connection, a timeout or a 5xx from the store raises StorageUnavailable, so callers can answer 503.
"""

from __future__ import annotations

import asyncio
import builtins
import configparser
import datetime
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import obstore
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError
from obstore.exceptions import BaseError as ObstoreError
from obstore.exceptions import PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store as ObstoreS3

if TYPE_CHECKING:  # a typed dict in obstore's stubs only
    from obstore._get import GetOptions

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
_STATUS = re.compile(r"status code: (\d{3})")
# obstore's own timeout covers a whole request, body included: a big streamed read would be cut.
# Stalls are caught per chunk by our request_timeout instead.
_OBSTORE_BODY_TIMEOUT = "24h"


class _RangeNotSatisfiable(Exception):
    """A start at or past the end of the object (HTTP 416)."""


def _obstore_error(op: str, key: str, exc: BaseException) -> StorageError | _RangeNotSatisfiable:
    if isinstance(exc, FileNotFoundError):  # obstore's NotFoundError is one
        return ObjectNotFound(key)
    if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)):
        return StorageError(f"{op} {key}: refused by the store: {str(exc).splitlines()[0]}")
    if isinstance(exc, ValueError):  # a path obstore cannot parse
        return StorageError(f"{op} {key}: bad object key: {exc}")
    status = _STATUS.search(str(exc))
    code = int(status.group(1)) if status else 0
    if code == 416:
        return _RangeNotSatisfiable()
    if 400 <= code < 500 and code not in (408, 429):
        return StorageError(f"{op} {key}: the store answered {code}: {str(exc).splitlines()[0]}")
    # No status: connection refused or reset, a timeout; or a 5xx, 408, 429.
    return StorageUnavailable(f"{op} {key}: store unreachable or failing: {str(exc).splitlines()[0]}")


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
    """The body of one GET, read in chunks, each under the request timeout."""

    def __init__(self, body: Any, info: ObjectInfo, start: int, end: int, timeout: float) -> None:
        self._body = body  # an obstore BytesStream, or None for an empty range
        self.info = info
        self.start = start
        self.end = end
        self._timeout = timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._body is None:
            return
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    data = await anext(self._body, None)
            except TimeoutError as exc:
                raise StorageUnavailable(f"reading {self.info.key}: no data for {self._timeout}s") from exc
            except (ObstoreError, OSError) as exc:
                error = _obstore_error("read", self.info.key, exc)
                raise (error if isinstance(error, StorageError) else StorageError(str(exc))) from exc
            if data is None:
                return
            yield data

    async def aclose(self) -> None:
        self._body = None  # dropping the stream closes its connection

    async def __aenter__(self) -> S3Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class S3Store:
    name = "s3"

    def __init__(self, client: Any, reader: ObstoreS3, exit_stack: AsyncExitStack, *, bucket: str,
                 prefix: str, part_size: int, request_timeout: float) -> None:
        self._client = client
        self._obs = reader
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
        prefix = check_prefix(prefix.strip("/"))
        reader = ObstoreS3(
            bucket, prefix=prefix or None, region=region, virtual_hosted_style_request=False,
            endpoint=endpoint or None,
            access_key_id=access_key_id if keys else None,
            secret_access_key=secret_access_key if keys else None,
            client_options={"allow_http": True, "connect_timeout": f"{int(connect_timeout * 1000)}ms",
                            "timeout": _OBSTORE_BODY_TIMEOUT},
            retry_config={"max_retries": 2, "retry_timeout": datetime.timedelta(seconds=request_timeout),
                          "backoff": {"init_backoff": datetime.timedelta(milliseconds=100),
                                      "max_backoff": datetime.timedelta(seconds=1), "base": 2}})
        stack = AsyncExitStack()
        client = await stack.enter_async_context(get_session().create_client(
            "s3", endpoint_url=endpoint or None, region_name=region, config=config, **keys))
        store = cls(client, reader, stack, bucket=bucket, prefix=prefix,
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

    async def _obs_call(self, op: str, key: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await call()
        except TimeoutError as exc:
            raise StorageUnavailable(f"{op} {key}: no answer in {self.timeout}s") from exc
        except (ObstoreError, OSError, ValueError) as exc:
            raise _obstore_error(op, key, exc) from exc

    def _full(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _rel(self, full: str) -> str:
        return full[len(self.prefix):]

    # -- whole objects -------------------------------------------------------------------------

    async def put(self, key: str, data: bytes | Path) -> str:
        if isinstance(data, Path):
            return await self.put_file(key, data)
        check_key(key)
        reply = await self._obs_call("put", key, lambda: obstore.put_async(
            self._obs, key, bytes(data), use_multipart=False))
        return _etag(reply["e_tag"] or "")

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

    @staticmethod
    def _range(start: int | None, end: int | None) -> Any:
        if start is not None and start < 0:
            if end is not None:
                raise StorageError("a suffix range (negative start) takes no end")
            return {"suffix": -start}
        if end is None:
            return {"offset": start} if start else None
        return (start or 0, end)

    async def _open(self, key: str, start: int | None, end: int | None) -> tuple[Any, ObjectInfo, int, int]:
        """One GET of a range: (obstore result or None when empty, info, first byte, one past the last)."""
        check_key(key)
        if end is not None and (start or 0) >= 0 and end <= (start or 0):
            info = await self.head(key)
            if info is None:
                raise ObjectNotFound(key)
            lo = min(start or 0, info.size)
            return None, info, lo, lo
        spec = self._range(start, end)
        options: GetOptions = {"range": spec} if spec is not None else {}
        try:
            result = await self._obs_call("get", key, lambda: obstore.get_async(self._obs, key, options=options))
        except _RangeNotSatisfiable:
            # A start at or past the end: empty, as a slice would be (416 for HTTP callers to make).
            info = await self.head(key)
            if info is None:
                raise ObjectNotFound(key) from None
            return None, info, info.size, info.size
        meta = result.meta
        info = ObjectInfo(key=key, size=int(meta["size"]), etag=_etag(meta["e_tag"] or ""),
                          mtime=meta["last_modified"].timestamp())
        lo, hi = result.range
        return result, info, lo, hi

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        result, _, _, _ = await self._open(key, start, end)
        if result is None:
            return b""
        return bytes(await self._obs_call("get", key, result.bytes_async))

    async def open_read(self, key: str, start: int | None = None, end: int | None = None,
                        chunk_size: int = 256 * 1024) -> S3Stream:
        result, info, lo, hi = await self._open(key, start, end)
        body = result.stream(min_chunk_size=chunk_size) if result is not None else None
        return S3Stream(body, info, lo, hi, self.timeout)

    async def download(self, key: str, path: Path) -> ObjectInfo:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.sg-tmp")
        try:
            async with await self.open_read(key, chunk_size=_DOWNLOAD_CHUNK) as stream:
                await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
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
        check_key(key)
        try:
            meta = await self._obs_call("head", key, lambda: obstore.head_async(self._obs, key))
        except ObjectNotFound:
            return None
        return ObjectInfo(key=key, size=int(meta["size"]), etag=_etag(meta["e_tag"] or ""),
                          mtime=meta["last_modified"].timestamp())

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
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
        batch: builtins.list[dict[str, str]] = []

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

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        parts: builtins.list[dict[str, Any]] = []
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

    async def list_multipart_uploads(self, prefix: str = "") -> AsyncIterator[MultipartUpload]:
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


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), size, offset)


def _flush_sync(out: Any) -> None:
    out.flush()
    os.fsync(out.fileno())
