"""A dead or silent Azure store fails fast with StoreUnavailable and works again once it is back (C8)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from app.storage.azure import AzureBlobStore
from app.storage.errors import StoreUnavailable
from app.storage.protocol import BlobStore
from tests.fixtures.blob import AzuriteRegions, AzuriteServer
from tests.storage.samples import REGION, new_key, small_settings, unit
from tests.storage.stalling_proxy import StallingProxy

TIMEOUT_S = 1.5
SLACK_S = 1.5  # scheduling noise on a busy 2-core CI machine; a hang would take far longer


PENDING = unit(9)  # the unit the writer was sending when the store went away


def _calls(store: BlobStore, key: Any) -> dict[str, Callable[[], Awaitable[object]]]:
    async def streamed() -> list[bytes]:
        return [chunk async for chunk in store.stream(key)]

    return {
        "append": lambda: store.append(key, PENDING, offset=600),
        "read": lambda: store.read(key),
        "stream": streamed,
        "length": lambda: store.length(key),
        "exists": lambda: store.exists(key),
        "create": lambda: store.create(new_key()),
        "delete": lambda: store.delete(new_key()),
        "check": store.check,
    }


async def _each_call_is_unavailable_in_time(store: BlobStore, key: Any) -> None:
    for name, call in _calls(store, key).items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await call()
        elapsed = time.monotonic() - started
        assert elapsed < TIMEOUT_S + SLACK_S, f"{name} took {elapsed:.2f} s"


@pytest.fixture
async def fault_store(azurite_factory: Callable[[str], AzuriteServer]) -> AsyncIterator[tuple[BlobStore,
                                                                                              AzuriteServer]]:
    server = azurite_factory("vlfault")
    store = AzureBlobStore.from_connection_string(
        region=REGION, connection_string=server.connection_string, container="recordings",
        settings=small_settings(timeout_s=TIMEOUT_S),
    )
    await store.prepare()
    yield store, server
    await store.close()


async def test_azurite_stopped_mid_recording_fails_fast_then_the_recording_continues(
    fault_store: tuple[BlobStore, AzuriteServer],
) -> None:
    store, server = fault_store
    key = new_key()
    await store.create(key)
    first = [unit(i) for i in range(2)]
    offset = 0
    for data in first:
        offset = await store.append(key, data, offset=offset)
    with server.stopped():
        await _each_call_is_unavailable_in_time(store, key)
    # Back up (same port, same data): the writer re-sends what failed and carries on.
    offset = await store.append(key, PENDING, offset=offset)
    later = [unit(i) for i in range(3, 7)]
    for data in later:
        offset = await store.append(key, data, offset=offset)
    assert await store.read(key) == b"".join([*first, PENDING, *later])
    await store.check()


async def test_a_store_that_never_answers_fails_within_the_timeout(azurite: AzuriteRegions,
                                                                   azurite_region_settings: Any) -> None:
    server = azurite.servers[REGION]
    container = next(r for r in azurite_region_settings if r.name == REGION).blob_container
    proxy = StallingProxy(server.port)
    await proxy.start()
    silent = server.connection_string.replace(f"127.0.0.1:{server.port}", f"127.0.0.1:{proxy.port}")
    store = AzureBlobStore.from_connection_string(region=REGION, connection_string=silent, container=container,
                                                  settings=small_settings(timeout_s=TIMEOUT_S))
    try:
        await store.prepare()
        key = new_key()
        await store.create(key)
        await store.append(key, unit(0), offset=0)
        await store.append(key, unit(1), offset=300)
        async with proxy.stalled():
            await _each_call_is_unavailable_in_time(store, key)  # requests land, answers never come
        assert await store.append(key, PENDING, offset=600) == 900  # the retry finds it landed
        assert await store.length(key) == 900
    finally:
        await store.close()
        await proxy.close()


async def test_sdk_retries_stay_inside_the_deadline(azurite_factory: Callable[[str], AzuriteServer]) -> None:
    server = azurite_factory("vlretry")
    store = AzureBlobStore.from_connection_string(
        region=REGION, connection_string=server.connection_string, container="recordings",
        settings=small_settings(timeout_s=TIMEOUT_S, azure_retry_total=10, azure_retry_backoff_s=1.0),
    )
    try:
        await store.prepare()
        server.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.length(new_key())
        assert time.monotonic() - started < TIMEOUT_S + SLACK_S
    finally:
        await store.close()
