"""One contract, two stores: every test here runs on the local directory store and on Azure (Azurite)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from app.storage.errors import Conflict, NotFound, StoreUnavailable, TooLarge
from app.storage.layout import RecordingKey
from app.storage.protocol import BlobStore
from tests.storage.conftest import Backend
from tests.storage.samples import new_key, unit


async def append_all(store: BlobStore, units: list[bytes], key: RecordingKey, offset: int = 0) -> int:
    for data in units:
        offset = await store.append(key, data, offset=offset)
    return offset


async def test_appended_units_read_back_exactly(store: BlobStore) -> None:
    key = new_key()
    await store.create(key)
    assert await store.exists(key)
    assert await store.length(key) == 0
    units = [unit(i, 100 + 37 * i) for i in range(3)]
    end = await append_all(store, units, key)
    assert end == sum(map(len, units))
    assert await store.length(key) == end
    assert await store.read(key) == b"".join(units)


async def test_ranges_inside_across_and_past_units(store: BlobStore) -> None:
    key = new_key()
    await store.create(key)
    units = [unit(i, 200) for i in range(3)]  # fits one part: 3 units < part_max_units
    await append_all(store, units, key)
    whole = b"".join(units)
    assert await store.read(key, offset=10, length=50) == whole[10:60]
    assert await store.read(key, offset=150, length=100) == whole[150:250]  # spans two units
    assert await store.read(key, offset=0, length=600) == whole
    assert await store.read(key, offset=550, length=1000) == whole[550:]  # runs past the end
    assert await store.read(key, offset=600) == b""
    assert await store.read(key, offset=5000, length=10) == b""
    assert await store.read(key, offset=300, length=0) == b""
    with pytest.raises(ValueError, match="offset"):
        await store.read(key, offset=-1)


async def test_stream_yields_the_whole_recording_in_bounded_chunks(store: BlobStore) -> None:
    key = new_key()
    await store.create(key)
    units = [unit(i, 700) for i in range(6)]  # 4200 bytes over two parts, chunks of 1000
    await append_all(store, units, key)
    chunks = [chunk async for chunk in store.stream(key)]
    assert b"".join(chunks) == b"".join(units)
    assert all(0 < len(chunk) <= 1000 for chunk in chunks)


async def test_create_is_retry_safe_but_never_over_data(store: BlobStore) -> None:
    key = new_key()
    await store.create(key)
    await store.create(key)  # a retried create of the still-empty recording
    await store.append(key, unit(0), offset=0)
    with pytest.raises(Conflict):
        await store.create(key)
    assert await store.length(key) == 300


async def test_unknown_recording_is_not_found(store: BlobStore) -> None:
    key = new_key()
    assert not await store.exists(key)
    with pytest.raises(NotFound):
        await store.append(key, unit(0), offset=0)
    with pytest.raises(NotFound):
        await store.read(key)
    with pytest.raises(NotFound):
        await store.length(key)
    with pytest.raises(NotFound):
        _ = [chunk async for chunk in store.stream(key)]
    assert await store.delete(key) is False


async def test_append_at_a_wrong_offset_conflicts_and_changes_nothing(store: BlobStore) -> None:
    key = new_key()
    await store.create(key)
    first, second = unit(0), unit(1)
    await store.append(key, first, offset=0)
    with pytest.raises(Conflict):
        await store.append(key, second, offset=0)  # behind, with different bytes
    with pytest.raises(Conflict):
        await store.append(key, second, offset=1000)  # ahead: would leave a gap
    with pytest.raises(Conflict):
        await store.append(key, first[:100], offset=0)  # a prefix is not the unit that landed
    assert await store.read(key) == first


async def test_repeating_the_last_append_succeeds_without_writing_twice(store: BlobStore) -> None:
    key = new_key()
    await store.create(key)
    units = [unit(i) for i in range(5)]  # crosses into a second part
    end = await append_all(store, units, key)
    assert await store.append(key, units[4], offset=1200) == end  # the last one again
    with pytest.raises(Conflict):
        await store.append(key, units[2], offset=600)  # an older one: the writer lost its place
    assert await store.length(key) == end
    assert await store.read(key) == b"".join(units)


async def test_retried_append_after_a_timeout_does_not_duplicate(backend: Backend,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    store = await backend.open(timeout_s=1.0, azure_retry_total=0)
    key = new_key()
    await store.create(key)
    first, second, third = unit(0), unit(1), unit(2)
    await store.append(key, first, offset=0)
    started = time.monotonic()
    async with backend.stalled():
        with pytest.raises(StoreUnavailable):
            await store.append(key, second, offset=300)  # lands, but the answer never arrives in time
    assert time.monotonic() - started < 4.0  # the deadline (1 s), not a hang
    await asyncio.sleep(0.6)  # let the stalled write finish on the store's side
    assert await store.append(key, second, offset=300) == 600  # the caller's retry
    assert "storage.append.already_landed" in caplog.text  # it had landed: the retry wrote nothing
    assert await store.append(key, third, offset=600) == 900
    assert await store.read(key) == first + second + third


async def test_concurrent_appends_to_different_recordings_stay_apart(store: BlobStore) -> None:
    keys = [new_key() for _ in range(12)]
    expected: dict[str, bytes] = {}

    async def record(index: int) -> None:
        key = keys[index]
        await store.create(key)
        units = [unit(index * 100 + i, 150 + index) for i in range(7)]
        offset = 0
        for data in units:
            offset = await store.append(key, data, offset=offset)
            await asyncio.sleep(0)
        expected[key.name] = b"".join(units)

    await asyncio.gather(*(record(i) for i in range(len(keys))))
    for key in keys:
        assert await store.read(key) == expected[key.name]


async def test_a_full_part_rolls_over_and_reads_walk_the_parts(backend: Backend, store: BlobStore) -> None:
    key = new_key()
    await store.create(key)
    units = [unit(i, 250) for i in range(10)]  # 4 units per part: parts 0, 1, 2
    end = await append_all(store, units, key)
    whole = b"".join(units)
    assert await backend.units_per_part(key, 250) == [4, 4, 2]
    assert await store.length(key) == end == len(whole)
    assert await store.read(key, offset=900, length=300) == whole[900:1200]  # part 0 into part 1
    assert await store.read(key, offset=1500, length=1000) == whole[1500:]  # part 1 into part 2
    assert b"".join([c async for c in store.stream(key)]) == whole
    [listed] = [o async for o in store.list_objects() if o.request_id == key.request_id]
    assert listed.parts == 3


async def test_a_part_rolls_over_by_size_before_it_overflows(backend: Backend) -> None:
    store = await backend.open(part_max_units=1000, part_max_bytes=2000, max_unit_bytes=1500)
    key = new_key()
    await store.create(key)
    units = [unit(i, 900) for i in range(5)]  # 2 units fit 2000 bytes; the third opens the next part
    await append_all(store, units, key)
    assert await backend.units_per_part(key, 900) == [2, 2, 1]
    assert await store.read(key) == b"".join(units)


async def test_a_fresh_store_continues_a_recording_with_the_same_parts(backend: Backend, store: BlobStore) -> None:
    key = new_key()
    await store.create(key)
    units = [unit(i) for i in range(8)]  # parts 0 and 1 full (4 units each)
    end = await append_all(store, units, key)
    reopened = await backend.open()  # another process: knows nothing cached, reads the layout back
    more = [unit(i) for i in range(8, 11)]
    assert await append_all(reopened, more, key, offset=end) == end + 900
    assert await backend.units_per_part(key, 300) == [4, 4, 3]  # the full part 1 was not appended to
    assert await store.read(key) == b"".join(units + more)  # the first store sees the new part too


async def test_delete_removes_every_part(backend: Backend, store: BlobStore) -> None:
    key, other = new_key(), new_key()
    for k in (key, other):
        await store.create(k)
        await append_all(store, [unit(i) for i in range(9)], k)
    assert await store.delete(key) is True
    assert not await store.exists(key)
    assert [n for n in await backend.names() if key.request_id in n] == []
    with pytest.raises(NotFound):
        await store.length(key)
    assert await store.delete(key) is False  # idempotent for a purge that runs twice
    assert await store.length(other) == 2700  # a neighbour in the same hour is untouched


async def test_a_unit_over_the_limit_is_too_large(store: BlobStore) -> None:
    key = new_key()
    await store.create(key)
    with pytest.raises(TooLarge):
        await store.append(key, b"x" * (64 * 1024 + 1), offset=0)
    with pytest.raises(ValueError, match="empty"):
        await store.append(key, b"", offset=0)
    assert await store.length(key) == 0


async def test_a_recording_past_its_last_part_is_too_large(backend: Backend) -> None:
    store = await backend.open(part_max_units=2, max_parts=2)
    key = new_key()
    await store.create(key)
    end = await append_all(store, [unit(i) for i in range(4)], key)
    with pytest.raises(TooLarge):
        await store.append(key, unit(4), offset=end)
    assert await store.length(key) == end


async def test_listing_finds_recordings_by_hour_with_their_creation_time(store: BlobStore) -> None:
    hour = datetime(2024, 12, 31, 23, 59, tzinfo=UTC)
    early, late = new_key(hour), new_key(hour + timedelta(minutes=2))  # 23:59 and 00:01 next day
    before = datetime.now(UTC) - timedelta(minutes=5)
    for key in (early, late):
        await store.create(key)
        await store.append(key, unit(0), offset=0)
    in_2024 = [o async for o in store.list_objects(prefix="2024/")]
    assert [o.name for o in in_2024] == [early.name]
    assert in_2024[0].key.name == early.name
    assert in_2024[0].hour == datetime(2024, 12, 31, 23, tzinfo=UTC)
    assert in_2024[0].created_at >= before
    assert [o.request_id async for o in store.list_objects(prefix="2025/01/01/00/")] == [late.request_id]
    assert [o async for o in store.list_objects(prefix="2023/")] == []
    with pytest.raises(ValueError, match="prefix"):
        _ = [o async for o in store.list_objects(prefix="2024/12/31/23/req")]


async def test_a_closed_store_is_unavailable(backend: Backend) -> None:
    store = await backend.open()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.exists(new_key())
