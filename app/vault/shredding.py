"""Crypto-shredding: erase one recording's data key, destroy a KEK bucket, sweep expired buckets (C7).

Order matters and is the caller's: the retention job deletes the wrapped-DEK row and the blob, then calls
`destroy_bucket`; an erasure request calls `shred_data_key` and deletes the row and blob. After either, a
copy of the blob and a copy of the wrapped key taken before no longer open: the key service refuses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from app.vault.envelope import WrappedKey, data_key_context
from app.vault.keyring import KeyBucket, KeyDestruction, Keyring


@dataclass(frozen=True, slots=True)
class DataKeyShredded:
    """Evidence of one recording's erasure, for the audit trail. Never key material."""

    region: str
    request_id: str
    bucket: KeyBucket
    wrapped_key_fingerprint: str
    erased_at: datetime


async def shred_data_key(
    keyring: Keyring, wrapped: WrappedKey | bytes, *, region: str, request_id: str, now: datetime
) -> DataKeyShredded:
    """Make the key service refuse this recording's wrapped DEK from now on, in every copy.

    The caller deletes the database row holding `wrapped` (and the blob) in the same unit of work.
    """
    if not isinstance(wrapped, WrappedKey):
        wrapped = WrappedKey.from_bytes(wrapped)
    bucket = wrapped.bucket(region)
    await keyring.erase(bucket, data_key_context(region, request_id, bucket))
    return DataKeyShredded(region=region, request_id=request_id, bucket=bucket,
                           wrapped_key_fingerprint=wrapped.fingerprint, erased_at=now)


async def destroy_bucket(keyring: Keyring, bucket: KeyBucket) -> KeyDestruction:
    """Destroy the KEK of (region, hour): every recording wrapped under it is unreadable, in every copy."""
    return await keyring.destroy(bucket)


async def destroy_expired_buckets(
    keyring: Keyring, *, now: datetime, lifetime: timedelta
) -> list[KeyDestruction]:
    """Destroy every live bucket whose lifetime has ended: the sweep that catches KEKs no row points to.

    Purge the recordings of each bucket before calling this; a bucket whose recordings are still there
    is destroyed all the same (C7 outranks a late purge).
    """
    due = await keyring.live_buckets(started_before=now - lifetime + timedelta(microseconds=1))
    return [await keyring.destroy(bucket) for bucket in due if bucket.expired(now, lifetime)]
