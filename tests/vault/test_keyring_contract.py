"""One contract for every KEK provider: LocalKeyring and KeyVaultKeyring (real SDK, fake vault) alike."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest

from app.clock import ManualClock
from app.vault.errors import KeyDestroyed, KeyUnavailable, UnwrapFailed
from app.vault.keyring import KeyBucket, Keyring
from tests.fixtures.keys import KEY_CLOCK_START, KEY_LIFETIME

DEK = bytes(range(32))
CONTEXT = b"\x01\x06eastus\x04rid1"
BUCKET = KeyBucket.of("eastus", KEY_CLOCK_START)


async def test_wrap_then_unwrap_returns_the_key(keyring: Keyring) -> None:
    await keyring.get_or_create(BUCKET)
    wrapped = await keyring.wrap(BUCKET, DEK, CONTEXT)
    assert DEK not in wrapped
    assert bytes(await keyring.unwrap(BUCKET, wrapped, CONTEXT)) == DEK


async def test_get_or_create_is_idempotent_and_keeps_the_same_kek(keyring: Keyring) -> None:
    await keyring.get_or_create(BUCKET)
    wrapped = await keyring.wrap(BUCKET, DEK, CONTEXT)
    await keyring.get_or_create(BUCKET)
    assert bytes(await keyring.unwrap(BUCKET, wrapped, CONTEXT)) == DEK


async def test_each_wrap_is_fresh(keyring: Keyring) -> None:
    await keyring.get_or_create(BUCKET)
    assert await keyring.wrap(BUCKET, DEK, CONTEXT) != await keyring.wrap(BUCKET, DEK, CONTEXT)


async def test_c3_unwrap_under_another_context_fails(keyring: Keyring) -> None:
    await keyring.get_or_create(BUCKET)
    wrapped = await keyring.wrap(BUCKET, DEK, CONTEXT)
    with pytest.raises(UnwrapFailed):
        await keyring.unwrap(BUCKET, wrapped, CONTEXT + b"x")


async def test_unwrap_under_another_bucket_fails(keyring: Keyring) -> None:
    other = KeyBucket.of("eastus", KEY_CLOCK_START + timedelta(hours=1))
    await keyring.get_or_create(BUCKET)
    await keyring.get_or_create(other)
    wrapped = await keyring.wrap(BUCKET, DEK, CONTEXT)
    with pytest.raises((UnwrapFailed, KeyUnavailable)):
        await keyring.unwrap(other, wrapped, CONTEXT)


@pytest.mark.parametrize("position", [0, 1, -1, -17])
async def test_tampered_wrapped_key_fails(keyring: Keyring, position: int) -> None:
    await keyring.get_or_create(BUCKET)
    wrapped = bytearray(await keyring.wrap(BUCKET, DEK, CONTEXT))
    wrapped[position] ^= 0x40
    with pytest.raises((UnwrapFailed, KeyUnavailable)):
        await keyring.unwrap(BUCKET, bytes(wrapped), CONTEXT)


async def test_truncated_wrapped_key_fails_cleanly(keyring: Keyring) -> None:
    await keyring.get_or_create(BUCKET)
    wrapped = await keyring.wrap(BUCKET, DEK, CONTEXT)
    for length in (0, 1, 5, len(wrapped) - 1):
        with pytest.raises(UnwrapFailed):
            await keyring.unwrap(BUCKET, wrapped[:length], CONTEXT)


async def test_unwrap_without_any_kek_is_unavailable(keyring: Keyring) -> None:
    await keyring.get_or_create(BUCKET)
    wrapped = await keyring.wrap(BUCKET, DEK, CONTEXT)
    never = KeyBucket.of("eastus", KEY_CLOCK_START - timedelta(hours=5))
    with pytest.raises(KeyUnavailable):
        await keyring.unwrap(never, wrapped, CONTEXT)
    with pytest.raises(KeyUnavailable):
        await keyring.wrap(never, DEK, CONTEXT)


async def test_destroy_makes_every_earlier_wrap_unrecoverable(keyring: Keyring) -> None:
    await keyring.get_or_create(BUCKET)
    wrapped = [await keyring.wrap(BUCKET, DEK, CONTEXT + bytes([i])) for i in range(3)]

    record = await keyring.destroy(BUCKET)

    assert record.bucket == BUCKET
    assert record.provider == keyring.provider
    for i, copy in enumerate(wrapped):
        with pytest.raises(KeyDestroyed):
            await keyring.unwrap(BUCKET, copy, CONTEXT + bytes([i]))


async def test_destroy_is_idempotent(keyring: Keyring) -> None:
    await keyring.get_or_create(BUCKET)
    first = await keyring.destroy(BUCKET)
    again = await keyring.destroy(BUCKET)
    assert again.bucket == first.bucket


async def test_destroyed_bucket_never_unwraps_even_if_recreated(keyring: Keyring) -> None:
    await keyring.get_or_create(BUCKET)
    wrapped = await keyring.wrap(BUCKET, DEK, CONTEXT)
    await keyring.destroy(BUCKET)
    # The local keyring remembers and refuses; Key Vault cannot after a purge, and makes a new KEK.
    with contextlib.suppress(KeyDestroyed):
        await keyring.get_or_create(BUCKET)
    with pytest.raises((KeyUnavailable, UnwrapFailed)):
        await keyring.unwrap(BUCKET, wrapped, CONTEXT)


async def test_no_kek_is_made_for_a_bucket_past_its_lifetime(keyring: Keyring, key_clock: ManualClock) -> None:
    old = KeyBucket.of("eastus", KEY_CLOCK_START - KEY_LIFETIME)
    with pytest.raises(KeyDestroyed):
        await keyring.get_or_create(old)
    assert await keyring.live_buckets(started_before=KEY_CLOCK_START + timedelta(days=1)) == []


async def test_erase_refuses_one_context_and_keeps_the_others(keyring: Keyring) -> None:
    await keyring.get_or_create(BUCKET)
    erased = await keyring.wrap(BUCKET, DEK, CONTEXT)
    kept = await keyring.wrap(BUCKET, DEK, CONTEXT + b"other")

    await keyring.erase(BUCKET, CONTEXT)
    await keyring.erase(BUCKET, CONTEXT)  # idempotent

    with pytest.raises(KeyDestroyed):
        await keyring.unwrap(BUCKET, erased, CONTEXT)
    assert bytes(await keyring.unwrap(BUCKET, kept, CONTEXT + b"other")) == DEK


async def test_erase_in_a_destroyed_bucket_is_a_no_op(keyring: Keyring) -> None:
    await keyring.get_or_create(BUCKET)
    await keyring.destroy(BUCKET)
    await keyring.erase(BUCKET, CONTEXT)


async def test_live_buckets_lists_existing_keks_before_a_cutoff(keyring: Keyring) -> None:
    hours = [KeyBucket.of(region, KEY_CLOCK_START - timedelta(hours=h)) for region in ("eastus", "westeurope")
             for h in (0, 3, 30)]
    for bucket in hours:
        await keyring.get_or_create(bucket)
    await keyring.destroy(hours[1])

    cutoff = KEY_CLOCK_START - timedelta(hours=2)
    live = await keyring.live_buckets(started_before=cutoff)

    assert live == sorted(b for b in hours if b.hour < cutoff and b != hours[1])
    await keyring.erase(hours[2], CONTEXT)  # erasure records are not buckets
    assert await keyring.live_buckets(started_before=cutoff) == live


async def test_live_buckets_cutoff_is_exclusive_to_the_microsecond(keyring: Keyring) -> None:
    """The purge asks for buckets started before `cutoff + 1 µs`: a bucket on the cutoff's hour is in exactly
    when the cutoff is past that hour's start."""
    bucket = KeyBucket.of("eastus", KEY_CLOCK_START - timedelta(hours=3))
    await keyring.get_or_create(bucket)
    assert bucket not in await keyring.live_buckets(started_before=bucket.hour)
    assert bucket in await keyring.live_buckets(started_before=bucket.hour + timedelta(microseconds=1))
    assert bucket in await keyring.live_buckets(started_before=bucket.hour + timedelta(minutes=59))
