"""Envelope encryption: sealed segment streams, per-recording data keys, hour-bucketed KEKs, shredding.

Knows nothing of tickets, people, HTTP or the database. docs/FORMAT.md documents every byte.
"""

from app.vault.datakey import DATA_KEY_SIZE, DataKey
from app.vault.envelope import (
    WrappedKey,
    create_data_key,
    data_key_context,
    unwrap_data_key,
    wrap_data_key,
)
from app.vault.errors import (
    IntegrityError,
    KeyDestroyed,
    KeyNotFound,
    KeyServiceError,
    KeyUnavailable,
    MalformedHeader,
    MalformedWrappedKey,
    ShortRead,
    StreamError,
    UnknownRegion,
    UnknownVersion,
    UnwrapFailed,
    VaultError,
    WriterClosed,
)
from app.vault.factory import build_keyrings
from app.vault.keyring import KeyBucket, KeyDestruction, Keyring, RegionKeyrings
from app.vault.keyvault import KeyVaultKeyring
from app.vault.local import LocalKeyring
from app.vault.segments import (
    FORMAT_VERSION,
    HEADER_SIZE,
    SEGMENT_OVERHEAD,
    OpenedStream,
    Segment,
    SegmentReader,
    SegmentWriter,
    aiter_segments,
    iter_segments,
    open_stream,
)
from app.vault.settings import VaultSettings
from app.vault.shredding import DataKeyShredded, destroy_bucket, destroy_expired_buckets, shred_data_key

__all__ = [
    "DATA_KEY_SIZE",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "SEGMENT_OVERHEAD",
    "DataKey",
    "DataKeyShredded",
    "IntegrityError",
    "KeyBucket",
    "KeyDestroyed",
    "KeyDestruction",
    "KeyNotFound",
    "KeyServiceError",
    "KeyUnavailable",
    "KeyVaultKeyring",
    "Keyring",
    "LocalKeyring",
    "MalformedHeader",
    "MalformedWrappedKey",
    "OpenedStream",
    "RegionKeyrings",
    "Segment",
    "SegmentReader",
    "SegmentWriter",
    "ShortRead",
    "StreamError",
    "UnknownRegion",
    "UnknownVersion",
    "UnwrapFailed",
    "VaultError",
    "VaultSettings",
    "WrappedKey",
    "WriterClosed",
    "aiter_segments",
    "build_keyrings",
    "create_data_key",
    "data_key_context",
    "destroy_bucket",
    "destroy_expired_buckets",
    "iter_segments",
    "open_stream",
    "shred_data_key",
    "unwrap_data_key",
    "wrap_data_key",
]
