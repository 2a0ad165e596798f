"""Regional blob storage for recordings (C3): one BlobStore per region, local directory or Azure append blobs.

Knows nothing of tickets, people, keys or HTTP: it keeps sealed bytes under a request ID and a start hour.
"""

from app.storage.azure import AzureBlobStore
from app.storage.errors import (
    Conflict,
    Corrupt,
    NotFound,
    StorageError,
    StoreUnavailable,
    TooLarge,
    UnknownRegion,
)
from app.storage.layout import RecordingKey, StoredObject, parse_part_name
from app.storage.local import LocalDirStore
from app.storage.protocol import BlobStore
from app.storage.router import READY, UNREACHABLE, RegionRouter
from app.storage.settings import StorageSettings

__all__ = [
    "READY",
    "UNREACHABLE",
    "AzureBlobStore",
    "BlobStore",
    "Conflict",
    "Corrupt",
    "LocalDirStore",
    "NotFound",
    "RecordingKey",
    "RegionRouter",
    "StorageError",
    "StorageSettings",
    "StoreUnavailable",
    "StoredObject",
    "TooLarge",
    "UnknownRegion",
    "parse_part_name",
]
