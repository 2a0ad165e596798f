"""Envelope keys: one DEK per recording, wrapped by its (region, hour) KEK and bound to region + request ID."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import pytest

from app.vault.datakey import DataKey
from app.vault.envelope import WrappedKey, create_data_key, unwrap_data_key
from app.vault.errors import MalformedWrappedKey, UnknownRegion, UnknownVersion, UnwrapFailed
from app.vault.keyring import KeyBucket, Keyring, RegionKeyrings
from app.vault.segments import open_stream
from tests.fixtures.keys import KEY_CLOCK_START
from tests.vault.streams import REGION, REQUEST_ID, seal_stream

STARTED = KEY_CLOCK_START


async def test_data_key_round_trips_through_its_wrapped_bytes(keyring: Keyring) -> None:
    dek, wrapped = await create_data_key(keyring, region=REGION, request_id=REQUEST_ID, started_at=STARTED)
    stored = wrapped.to_bytes()  # what the database keeps

    with await unwrap_data_key(keyring, stored, region=REGION, request_id=REQUEST_ID) as again:
        assert again.same_as(dek)


async def test_each_recording_gets_its_own_random_data_key(keyring: Keyring) -> None:
    a, _ = await create_data_key(keyring, region=REGION, request_id="a", started_at=STARTED)
    b, _ = await create_data_key(keyring, region=REGION, request_id="b", started_at=STARTED)
    assert not a.same_as(b)


async def test_wrapped_key_names_the_hour_bucket_of_the_start(keyring: Keyring) -> None:
    started = datetime(2025, 3, 10, 10, 59, 59, 999_000, tzinfo=UTC)
    _, wrapped = await create_data_key(keyring, region=REGION, request_id=REQUEST_ID, started_at=started)
    assert wrapped.bucket(REGION) == KeyBucket("eastus", datetime(2025, 3, 10, 10, tzinfo=UTC))
    raw = wrapped.to_bytes()
    assert raw[0] == 1
    assert struct.unpack(">I", raw[1:5])[0] == wrapped.bucket_hours == 483_778


@pytest.mark.parametrize(("region", "request_id"), [("westeurope", REQUEST_ID), (REGION, "another-recording")])
async def test_c3_wrapped_key_does_not_unwrap_for_another_recording_or_region(
    keyring: Keyring, region: str, request_id: str
) -> None:
    await keyring.get_or_create(KeyBucket.of("westeurope", STARTED))
    _, wrapped = await create_data_key(keyring, region=REGION, request_id=REQUEST_ID, started_at=STARTED)
    with pytest.raises((UnwrapFailed, UnknownRegion)):
        await unwrap_data_key(keyring, wrapped, region=region, request_id=request_id)


async def test_c3_moved_bucket_hour_does_not_unwrap(keyring: Keyring) -> None:
    await keyring.get_or_create(KeyBucket.of(REGION, STARTED + timedelta(hours=1)))
    _, wrapped = await create_data_key(keyring, region=REGION, request_id=REQUEST_ID, started_at=STARTED)
    moved = WrappedKey(bucket_hours=wrapped.bucket_hours + 1, sealed=wrapped.sealed)
    with pytest.raises(UnwrapFailed):
        await unwrap_data_key(keyring, moved, region=REGION, request_id=REQUEST_ID)


async def test_region_router_keeps_each_region_on_its_own_keyring(region_keyrings: RegionKeyrings) -> None:
    _, wrapped = await create_data_key(region_keyrings, region="westeurope", request_id="r", started_at=STARTED)
    assert (await unwrap_data_key(region_keyrings, wrapped, region="westeurope", request_id="r")) is not None
    with pytest.raises(UnknownRegion):
        await create_data_key(region_keyrings, region="centralus", request_id="r", started_at=STARTED)


async def test_recording_sealed_with_a_fresh_key_opens_after_unwrapping(keyring: Keyring) -> None:
    dek, wrapped = await create_data_key(keyring, region=REGION, request_id=REQUEST_ID, started_at=STARTED)
    stream, _ = seal_stream(dek, [b"hello"])
    dek.destroy()
    with await unwrap_data_key(keyring, wrapped.to_bytes(), region=REGION, request_id=REQUEST_ID) as key:
        assert open_stream(key, stream, region=REGION, request_id=REQUEST_ID).segments == (b"hello",)


@pytest.mark.parametrize("raw", [b"", b"\x01", b"\x01\x00\x07\x58\x7a", b"\x01" + bytes(20), b"\x01" + bytes(5000)])
def test_malformed_wrapped_key_bytes_are_a_typed_error(raw: bytes) -> None:
    with pytest.raises(MalformedWrappedKey):
        WrappedKey.from_bytes(raw)


def test_unknown_wrapped_key_version_is_named() -> None:
    with pytest.raises(UnknownVersion, match="wrapped key"):
        WrappedKey.from_bytes(b"\x02" + bytes(70))


def test_wrapped_key_fingerprint_is_stable_and_content_free() -> None:
    wrapped = WrappedKey(bucket_hours=483_778, sealed=bytes(61))
    assert wrapped.fingerprint == WrappedKey.from_bytes(wrapped.to_bytes()).fingerprint
    assert len(wrapped.fingerprint) == 64


def test_data_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        DataKey(bytes(31))
