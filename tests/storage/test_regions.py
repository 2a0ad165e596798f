"""C3 region pinning: each region's recordings go to its own account or directory, and nowhere else."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from azure.storage.blob.aio import BlobServiceClient
from pydantic import SecretStr

from app.config import Settings
from app.regions import RegionSettings
from app.storage.azure import AzureBlobStore
from app.storage.errors import NotFound, StoreUnavailable, UnknownRegion
from app.storage.local import LocalDirStore
from app.storage.router import READY, UNREACHABLE, RegionRouter
from tests.fixtures.blob import AzuriteRegions, AzuriteServer
from tests.storage.samples import new_key, small_settings, unit


async def _account_listing(server: AzuriteServer) -> list[tuple[str, str]]:
    """Every (container, blob) in one Azurite account."""
    found: list[tuple[str, str]] = []
    async with BlobServiceClient.from_connection_string(server.connection_string) as service:
        async for container in service.list_containers():
            client = service.get_container_client(container.name)
            found.extend([(str(container.name), str(blob.name)) async for blob in client.list_blobs()])
    return found


async def test_a_write_for_one_region_never_lands_in_the_other_account(
    azurite: AzuriteRegions, azurite_region_settings: list[RegionSettings]
) -> None:
    router = RegionRouter.from_settings(azurite_region_settings, small_settings())
    try:
        await router.prepare()
        east, west = new_key(), new_key()
        for region, key in (("eastus", east), ("westeurope", west)):
            store = router.store(region)
            await store.create(key)
            offset = 0
            for i in range(6):  # two parts each
                offset = await store.append(key, unit(i), offset=offset)
        east_blobs = await _account_listing(azurite.servers["eastus"])
        west_blobs = await _account_listing(azurite.servers["westeurope"])
        container = azurite_region_settings[0].blob_container
        assert {b for c, b in east_blobs if c == container} == {east.name, f"{east.name}.1"}
        assert {b for c, b in west_blobs if c == container} == {west.name, f"{west.name}.1"}
        assert not [b for _, b in west_blobs if east.request_id in b]
        assert not [b for _, b in east_blobs if west.request_id in b]
        with pytest.raises(NotFound):
            await router.store("westeurope").read(east)
        assert not await router.store("eastus").exists(west)
    finally:
        await router.close()


async def test_local_regions_keep_to_their_own_directories(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)  # the embedded default: eastus and westeurope, local
    router = RegionRouter.from_settings(settings.regions, small_settings())
    try:
        await router.prepare()
        key = new_key()
        await router.store("westeurope").create(key)
        await router.store("westeurope").append(key, unit(0), offset=0)
        east = [p for p in (tmp_path / "blobs" / "eastus").rglob("*") if p.is_file()]
        west = [p.relative_to(tmp_path / "blobs" / "westeurope").as_posix()
                for p in (tmp_path / "blobs" / "westeurope").rglob("*") if p.is_file()]
        assert east == []
        assert west == [key.name]
    finally:
        await router.close()


async def test_an_unknown_region_is_an_error_never_another_region(tmp_path: Path) -> None:
    router = RegionRouter.from_settings(Settings(data_dir=tmp_path).regions, small_settings())
    try:
        assert router.regions == ("eastus", "westeurope")
        for name in ("northpole", "EastUS", "", "eastus "):
            with pytest.raises(UnknownRegion):
                router.store(name)
    finally:
        await router.close()


async def test_router_builds_the_backend_each_region_names(tmp_path: Path) -> None:
    regions = [
        RegionSettings(name="eastus", blob_path=tmp_path / "east"),
        RegionSettings(name="westeurope", blob_backend="azure",
                       blob_connection_string=SecretStr("DefaultEndpointsProtocol=http;AccountName=devx;"
                                                        "AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:9/devx;")),
        RegionSettings(name="swedencentral", blob_backend="azure",
                       blob_account_url="https://vlswedencentral.blob.core.windows.net"),
    ]
    router = RegionRouter.from_settings(regions, small_settings())
    assert isinstance(router.store("eastus"), LocalDirStore)
    assert isinstance(router.store("westeurope"), AzureBlobStore)
    assert isinstance(router.store("swedencentral"), AzureBlobStore)
    await router.close()  # closes clients and the shared credential without a request
    await router.close()


def test_a_region_without_a_location_is_refused() -> None:
    with pytest.raises(ValueError, match="blob_path"):
        RegionRouter.from_settings([RegionSettings(name="eastus")])
    with pytest.raises(ValueError, match="blob_account_url"):
        RegionRouter.from_settings([RegionSettings(name="eastus", blob_backend="azure")])
    with pytest.raises(ValueError, match="twice"):
        RegionRouter.from_settings([RegionSettings(name="eastus", blob_path=Path("a")),
                                    RegionSettings(name="eastus", blob_path=Path("b"))])


async def test_readiness_is_reported_per_region(tmp_path: Path,
                                                azurite_factory: Callable[[str], AzuriteServer]) -> None:
    server = azurite_factory("vlready")
    regions = [
        RegionSettings(name="eastus", blob_path=tmp_path / "east"),
        RegionSettings(name="westeurope", blob_backend="azure", blob_container="recordings",
                       blob_connection_string=SecretStr(server.connection_string)),
    ]
    router = RegionRouter.from_settings(regions, small_settings(timeout_s=1.0, ready_timeout_s=1.0))
    try:
        assert await router.check_ready() == {"eastus": UNREACHABLE, "westeurope": UNREACHABLE}  # not prepared
        await router.prepare()
        assert await router.check_ready() == {"eastus": READY, "westeurope": READY}
        with server.stopped():
            started = time.monotonic()
            assert await router.check_ready() == {"eastus": READY, "westeurope": UNREACHABLE}
            assert time.monotonic() - started < 3.0
        assert await router.check_ready() == {"eastus": READY, "westeurope": READY}
    finally:
        await router.close()
    with pytest.raises(StoreUnavailable):
        await router.store("westeurope").exists(new_key())
    with pytest.raises(StoreUnavailable):
        await router.store("eastus").exists(new_key())
