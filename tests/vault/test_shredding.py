"""C7 crypto-shredding: once a KEK bucket is destroyed, or one recording's key erased, copies of the blob
and of the database row taken before are unreadable."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest

from app.clock import ManualClock
from app.vault.envelope import create_data_key, unwrap_data_key
from app.vault.errors import KeyDestroyed, KeyUnavailable
from app.vault.keyring import KeyBucket, Keyring
from app.vault.segments import open_stream
from app.vault.shredding import destroy_bucket, destroy_expired_buckets, shred_data_key
from tests.fixtures.keys import KEY_CLOCK_START, KEY_LIFETIME
from tests.vault.streams import REGION, seal_stream


@dataclass(frozen=True)
class Copy:
    """What a backup holds: the blob bytes and the wrapped-DEK column of the row."""

    request_id: str
    blob: bytes
    wrapped_row: bytes


async def _record(keyring: Keyring, request_id: str, marker: bytes, minutes: int = 0) -> Copy:
    dek, wrapped = await create_data_key(
        keyring, region=REGION, request_id=request_id, started_at=KEY_CLOCK_START + timedelta(minutes=minutes)
    )
    with dek:
        blob, _ = seal_stream(dek, [marker, b"more audio"], request_id=request_id)
    return Copy(request_id, blob, wrapped.to_bytes())


async def _read(keyring: Keyring, copy: Copy) -> bytes:
    with await unwrap_data_key(keyring, copy.wrapped_row, region=REGION, request_id=copy.request_id) as dek:
        return open_stream(dek, copy.blob, region=REGION, request_id=copy.request_id).plaintext


async def test_c7_after_bucket_destruction_copies_of_blob_and_row_are_unreadable(keyring: Keyring) -> None:
    copies = [await _record(keyring, f"rec-{i}", b"MARKER-%d" % i, minutes=i * 10) for i in range(3)]
    assert (await _read(keyring, copies[0])).startswith(b"MARKER-0")  # readable before

    record = await destroy_bucket(keyring, KeyBucket.of(REGION, KEY_CLOCK_START))

    assert record.bucket.hour == KEY_CLOCK_START.replace(minute=0)
    for copy in copies:
        with pytest.raises(KeyDestroyed):
            await _read(keyring, copy)


async def test_bucket_destruction_leaves_other_hours_readable(keyring: Keyring) -> None:
    doomed = await _record(keyring, "doomed", b"a")
    survivor = await _record(keyring, "survivor", b"b", minutes=60)
    await destroy_bucket(keyring, KeyBucket.of(REGION, KEY_CLOCK_START))
    with pytest.raises(KeyDestroyed):
        await _read(keyring, doomed)
    assert (await _read(keyring, survivor)).startswith(b"b")


async def test_erasure_makes_copies_of_one_recording_unreadable_and_spares_its_bucket(keyring: Keyring) -> None:
    erased = await _record(keyring, "erase-me", b"PRIVATE")
    neighbour = await _record(keyring, "neighbour", b"kept", minutes=5)

    receipt = await shred_data_key(keyring, erased.wrapped_row, region=REGION, request_id="erase-me",
                                   now=KEY_CLOCK_START)

    assert receipt.request_id == "erase-me"
    assert len(receipt.wrapped_key_fingerprint) == 64
    with pytest.raises(KeyDestroyed):
        await _read(keyring, erased)  # the backup copy of the row no longer unwraps
    assert (await _read(keyring, neighbour)).startswith(b"kept")


async def test_expired_buckets_are_swept_at_thirty_days_and_not_before(
    keyring: Keyring, key_clock: ManualClock
) -> None:
    copy = await _record(keyring, "old", b"x")
    later = await _record(keyring, "later", b"y", minutes=60)
    bucket_start = KEY_CLOCK_START.replace(minute=0)

    key_clock.advance(bucket_start + KEY_LIFETIME - timedelta(seconds=1) - key_clock.now())
    assert await destroy_expired_buckets(keyring, now=key_clock.now(), lifetime=KEY_LIFETIME) == []
    assert (await _read(keyring, copy)).startswith(b"x")

    key_clock.advance(timedelta(seconds=1))
    destroyed = await destroy_expired_buckets(keyring, now=key_clock.now(), lifetime=KEY_LIFETIME)

    assert [d.bucket for d in destroyed] == [KeyBucket(REGION, bucket_start)]
    with pytest.raises(KeyUnavailable):
        await _read(keyring, copy)
    assert (await _read(keyring, later)).startswith(b"y")
    with pytest.raises(KeyDestroyed):  # and a late writer cannot bring the bucket back
        await create_data_key(keyring, region=REGION, request_id="late", started_at=bucket_start)
