"""Storage test fixtures: one `backend` parametrized over the local directory and Azure (Azurite)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob.aio import BlobServiceClient

from app.regions import RegionSettings
from app.storage import local as local_module
from app.storage.azure import AzureBlobStore
from app.storage.layout import RecordingKey
from app.storage.local import LocalDirStore
from app.storage.local_file import FILE_HEADER, FRAME_HEADER
from app.storage.protocol import BlobStore
from app.storage.settings import StorageSettings
from tests.fixtures.blob import AzuriteRegions
from tests.storage.samples import REGION, small_settings
from tests.storage.stalling_proxy import StallingProxy


@dataclass
class Backend:
    """One kind of store under test, able to open more stores on the same data and to stall answers."""

    kind: str
    opener: Callable[[StorageSettings], BlobStore]
    stall_context: Callable[[], contextlib.AbstractAsyncContextManager[None]]
    stored_sizes: Callable[[], Any]
    opened: list[BlobStore] = field(default_factory=list)

    async def open(self, **overrides: Any) -> BlobStore:
        store = self.opener(small_settings(**overrides))
        self.opened.append(store)
        await store.prepare()
        return store

    def stalled(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Calls made inside take effect in the store but their answers arrive too late (a timeout)."""
        return self.stall_context()

    async def sizes(self) -> dict[str, int]:
        """Every object the backend holds, name -> stored size (Azure listing, or files under the directory)."""
        sizes: dict[str, int] = await self.stored_sizes()
        return sizes

    async def names(self) -> list[str]:
        return sorted(await self.sizes())

    async def units_per_part(self, key: RecordingKey, unit_bytes: int) -> list[int]:
        """How many equal-sized units each part of the recording holds, as stored."""
        sizes = await self.sizes()
        counts: list[int] = []
        while (size := sizes.get(key.part_name(len(counts)))) is not None:
            payload = size if self.kind == "azure" else size - FILE_HEADER.size
            counts.append(payload // (unit_bytes + (0 if self.kind == "azure" else FRAME_HEADER.size)))
        return counts


@contextlib.contextmanager
def _slow_local_appends(monkeypatch: pytest.MonkeyPatch, delay_s: float) -> Iterator[None]:
    real = local_module.append_unit

    def landed_then_slow(part: Any, data: bytes) -> None:
        real(part, data)
        time.sleep(delay_s)  # the unit is on disk; the caller's deadline passes before we return

    with monkeypatch.context() as patch:
        patch.setattr(local_module, "append_unit", landed_then_slow)
        yield


@pytest.fixture(params=["local", "azure"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                  ) -> AsyncIterator[Backend]:
    kind: str = request.param
    if kind == "local":
        root = tmp_path / "blobs" / REGION

        @contextlib.asynccontextmanager
        async def local_stall() -> AsyncIterator[None]:
            with _slow_local_appends(monkeypatch, delay_s=1.5):
                yield

        async def local_sizes() -> dict[str, int]:
            return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}

        made = Backend(kind, lambda s: LocalDirStore(region=REGION, root=root, settings=s), local_stall, local_sizes)
        yield made
        for store in made.opened:
            await store.close()
        return

    azurite: AzuriteRegions = request.getfixturevalue("azurite")
    region: RegionSettings = next(r for r in request.getfixturevalue("azurite_region_settings") if r.name == REGION)
    server = azurite.servers[REGION]
    proxy = StallingProxy(server.port)
    await proxy.start()
    via_proxy = server.connection_string.replace(f"127.0.0.1:{server.port}", f"127.0.0.1:{proxy.port}")

    async def azure_sizes() -> dict[str, int]:
        async with BlobServiceClient.from_connection_string(server.connection_string) as service:
            container = service.get_container_client(region.blob_container)
            return {str(b.name): int(b.size) async for b in container.list_blobs()}

    made = Backend(
        kind,
        lambda s: AzureBlobStore.from_connection_string(region=REGION, connection_string=via_proxy,
                                                        container=region.blob_container, settings=s),
        proxy.stalled,
        azure_sizes,
    )
    yield made
    for store in made.opened:
        await store.close()
    await proxy.close()


@pytest.fixture
async def store(backend: Backend) -> BlobStore:
    return await backend.open()
