"""Object storage: one async interface (``ObjectStore``), a disk and an S3 backend."""

from streamgate.common.config import Config, StorageConfig
from streamgate.common.storage.base import (
    MIN_PART_SIZE,
    MultipartUpload,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectStream,
    PartInfo,
    StorageError,
    StorageUnavailable,
    UploadNotFound,
)

__all__ = [
    "MIN_PART_SIZE", "MultipartUpload", "ObjectInfo", "ObjectNotFound", "ObjectStore", "ObjectStream",
    "PartInfo", "StorageError", "StorageUnavailable", "UploadNotFound", "open_store",
]


async def open_store(config: Config | StorageConfig) -> ObjectStore:
    """The configured backend, from a ``Config`` or its ``storage`` section; ``await store.close()``."""
    storage = config.storage if isinstance(config, Config) else config
    if storage.backend == "s3":
        from streamgate.common.storage.s3 import S3Store  # aiobotocore is loaded only when used

        s3 = storage.s3
        return await S3Store.open(
            endpoint=s3.endpoint, bucket=s3.bucket, region=s3.region, prefix=s3.prefix,
            access_key_id=s3.access_key_id, secret_access_key=s3.secret_access_key,
            credentials_file=s3.credentials_file, part_size=int(s3.part_size),
            connect_timeout=float(s3.connect_timeout), request_timeout=float(s3.request_timeout),
            create_bucket=s3.create_bucket)
    from streamgate.common.storage.disk import DiskStore

    # Rooted at data_dir, so keys sources/... and media/... are today's single-node paths.
    return DiskStore(storage.root, part_size=int(storage.s3.part_size))
