"""Object storage: one async interface (``ObjectStore``), a disk and an S3 backend."""

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
    "PartInfo", "StorageError", "StorageUnavailable", "UploadNotFound",
]
