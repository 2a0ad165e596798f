"""Envelope keys: one random DEK per recording, wrapped by its (region, hour) KEK with region and request
ID bound as associated data, so a wrapped DEK moved to another recording or region does not unwrap (C3).

WrappedKey byte layout (version 1), stored by the database as one opaque bytes column:

    offset 0   1 byte   version = 0x01
    offset 1   4 bytes  bucket hour: u32 big-endian, whole hours since 1970-01-01T00:00Z
    offset 5   n bytes  the KEK provider's sealed key (layout per provider, docs/FORMAT.md)
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from datetime import datetime

from app.vault.datakey import DATA_KEY_SIZE, DataKey
from app.vault.errors import MalformedWrappedKey, UnknownVersion, UnwrapFailed
from app.vault.keyring import KeyBucket, Keyring
from app.vault.segments import encode_binding

WRAPPED_KEY_VERSION = 1
_PREFIX = struct.Struct(">BI")
MIN_SEALED = 1 + 12 + DATA_KEY_SIZE + 16  # the smallest provider layout (local)
MAX_SEALED = 4096


def data_key_context(region: str, request_id: str, bucket: KeyBucket) -> bytes:
    """Associated data of a wrapped DEK: version | region | request ID | bucket hour (docs/FORMAT.md)."""
    return bytes([WRAPPED_KEY_VERSION]) + encode_binding(region, request_id) + struct.pack(
        ">I", bucket.hours_since_epoch
    )


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A DEK sealed under its bucket's KEK. Safe to store: useless without the KEK and the right binding."""

    bucket_hours: int
    sealed: bytes
    version: int = WRAPPED_KEY_VERSION

    def to_bytes(self) -> bytes:
        return _PREFIX.pack(self.version, self.bucket_hours) + self.sealed

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> WrappedKey:
        raw = bytes(data)
        if not raw:
            raise MalformedWrappedKey("the wrapped key is empty")
        if raw[0] != WRAPPED_KEY_VERSION:
            raise UnknownVersion(raw[0], what="wrapped key")
        if not _PREFIX.size + MIN_SEALED <= len(raw) <= _PREFIX.size + MAX_SEALED:
            raise MalformedWrappedKey(f"a wrapped key of {len(raw)} bytes is out of range")
        version, hours = _PREFIX.unpack_from(raw)
        return cls(bucket_hours=hours, sealed=raw[_PREFIX.size :], version=version)

    def bucket(self, region: str) -> KeyBucket:
        return KeyBucket.from_hours(region, self.bucket_hours)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the stored bytes, hex: names this wrapped key in audit entries and receipts."""
        return hashlib.sha256(self.to_bytes()).hexdigest()


async def wrap_data_key(
    keyring: Keyring, dek: DataKey, *, region: str, request_id: str, started_at: datetime
) -> WrappedKey:
    """Wrap `dek` under the KEK of (region, hour of `started_at`), creating that KEK if needed."""
    bucket = KeyBucket.of(region, started_at)
    await keyring.get_or_create(bucket)
    sealed = await keyring.wrap(bucket, dek.material(), data_key_context(region, request_id, bucket))
    return WrappedKey(bucket_hours=bucket.hours_since_epoch, sealed=sealed)


async def create_data_key(
    keyring: Keyring, *, region: str, request_id: str, started_at: datetime
) -> tuple[DataKey, WrappedKey]:
    """A fresh DEK for a new recording and its wrapped form for the database. Destroy the DEK after use."""
    dek = DataKey.generate()
    try:
        wrapped = await wrap_data_key(keyring, dek, region=region, request_id=request_id, started_at=started_at)
    except BaseException:
        dek.destroy()
        raise
    return dek, wrapped


async def unwrap_data_key(
    keyring: Keyring, wrapped: WrappedKey | bytes, *, region: str, request_id: str
) -> DataKey:
    """The DEK of the recording (region, request_id); fails for a wrapped key of any other one (C3)."""
    if not isinstance(wrapped, WrappedKey):
        wrapped = WrappedKey.from_bytes(wrapped)
    bucket = wrapped.bucket(region)
    material = await keyring.unwrap(bucket, wrapped.sealed, data_key_context(region, request_id, bucket))
    try:
        if len(material) != DATA_KEY_SIZE:
            raise UnwrapFailed("the unwrapped key has the wrong size")
        return DataKey(material)
    finally:
        material[:] = bytes(len(material))
