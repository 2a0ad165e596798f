"""RegionRouter: region name -> that region's store. An unknown region is an error, never a fallback (C3)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from azure.core.credentials_async import AsyncTokenCredential

from app.clock import Clock
from app.logs import get_logger
from app.regions import RegionSettings
from app.storage.azure import AzureBlobStore
from app.storage.errors import StorageError, UnknownRegion
from app.storage.local import LocalDirStore
from app.storage.protocol import BlobStore
from app.storage.settings import StorageSettings

log = get_logger("voicelog.storage")

READY = "ok"
UNREACHABLE = "unreachable"
LOW_SPACE = "low_space"
"""A local store that answers but whose filesystem has less than `local_min_free_bytes` free: appends will
soon fail with a full disk. Reported, never gating readiness."""


class RegionRouter:
    """Holds one store per configured region for the life of the process; `close()` releases them all.

    Route a read by the recording's region as stored in the database, never by a value a client sent.
    """

    def __init__(
        self,
        stores: Mapping[str, BlobStore],
        *,
        settings: StorageSettings | None = None,
        on_close: Sequence[AsyncTokenCredential | ThreadPoolExecutor] = (),
    ) -> None:
        if not stores:
            raise ValueError("at least one region's store is needed")
        self._stores = dict(stores)
        self._settings = settings or StorageSettings()
        self._on_close = list(on_close)
        self._free_bytes: dict[str, int] = {}

    @classmethod
    def from_settings(
        cls,
        regions: Sequence[RegionSettings],
        settings: StorageSettings | None = None,
        *,
        clock: Clock | None = None,
        credential: AsyncTokenCredential | None = None,
    ) -> RegionRouter:
        """One store per region: a local directory or the region's own Azure account and container.

        Azure regions with an account URL share one credential: `credential`, or a DefaultAzureCredential
        made here and closed with the router.
        """
        settings = settings or StorageSettings()
        owned: list[AsyncTokenCredential | ThreadPoolExecutor] = []
        executor: ThreadPoolExecutor | None = None
        stores: dict[str, BlobStore] = {}
        for region in regions:
            if region.name in stores:
                raise ValueError(f"region {region.name} is configured twice")
            if region.blob_backend == "local":
                if executor is None:
                    executor = ThreadPoolExecutor(max_workers=settings.local_io_threads,
                                                  thread_name_prefix="blob-local")
                    owned.append(executor)
                stores[region.name] = LocalDirStore(region=region.name, root=_local_root(region),
                                                    settings=settings, clock=clock, executor=executor)
            elif region.blob_connection_string is not None:
                stores[region.name] = AzureBlobStore.from_connection_string(
                    region=region.name, connection_string=region.blob_connection_string.get_secret_value(),
                    container=region.blob_container, settings=settings,
                )
            elif region.blob_account_url:
                if credential is None:
                    from azure.identity.aio import DefaultAzureCredential

                    credential = DefaultAzureCredential()
                    owned.append(credential)
                stores[region.name] = AzureBlobStore.from_account_url(
                    region=region.name, account_url=region.blob_account_url, container=region.blob_container,
                    settings=settings, credential=credential,
                )
            else:
                raise ValueError(f"region {region.name}: azure backend needs blob_account_url or "
                                 "blob_connection_string")
        return cls(stores, settings=settings, on_close=owned)

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(self._stores)

    def store(self, region: str) -> BlobStore:
        """The store of `region`; UnknownRegion if it is not configured (C3: never another region's)."""
        try:
            return self._stores[region]
        except KeyError:
            raise UnknownRegion(f"no blob store configured for region {region!r}") from None

    async def prepare(self) -> None:
        """Create what settings allow (local directories; containers when `create_containers`)."""
        for store in self._stores.values():
            await store.prepare()

    def has_free_space_check(self, region: str) -> bool:
        """True for a region whose store is a local directory (its free space is probed with readiness)."""
        return isinstance(self._stores.get(region), LocalDirStore)

    def free_bytes(self, region: str) -> float:
        """The free bytes the last readiness probe found for a local region's filesystem; NaN before one."""
        return float(self._free_bytes.get(region, math.nan))

    async def check_ready(self) -> dict[str, str]:
        """Per region "ok", "unreachable" or (local stores) "low_space", all probed at once, each within
        `ready_timeout_s` (/readyz)."""
        names = list(self._stores)
        results = await asyncio.gather(*(self._probe(name) for name in names))
        return dict(zip(names, results, strict=True))

    async def close(self) -> None:
        """Close every store's clients, then shared credentials and threads. Idempotent."""
        for store in self._stores.values():
            try:
                await store.close()
            except Exception as exc:  # one store failing to close must not keep the others open
                log.warning("storage.close_failed", region=store.region, error=type(exc).__name__)
        resources, self._on_close = self._on_close, []
        for resource in resources:
            if isinstance(resource, ThreadPoolExecutor):
                await asyncio.to_thread(resource.shutdown, True)
            else:
                await resource.close()

    async def _probe(self, region: str) -> str:
        store = self._stores[region]
        try:
            async with asyncio.timeout(self._settings.ready_timeout_s):
                await store.check()
                if not isinstance(store, LocalDirStore):
                    return READY
                free = self._free_bytes[region] = await store.free_bytes()
        except (StorageError, TimeoutError) as exc:
            log.warning("storage.region_unreachable", region=region, error=type(exc).__name__)
            return UNREACHABLE
        if free < self._settings.local_min_free_bytes:
            log.warning("storage.low_space", region=region, free_bytes=free,
                        min_free_bytes=self._settings.local_min_free_bytes)
            return LOW_SPACE
        return READY


def _local_root(region: RegionSettings) -> Path:
    if region.blob_path is None:
        raise ValueError(f"region {region.name}: local backend needs blob_path (Settings fills it from data_dir)")
    return region.blob_path
