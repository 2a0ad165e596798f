"""AzureBlobStore: a region's recordings as append blobs in the region's own storage account (C3).

Every append carries the append-position condition (and the part's max-size condition), so an append
retried after a timeout either finds its bytes already committed at that offset (success) or fails with
Conflict; it never lands twice. Clients are built once per store, pinned to one service API version,
with SDK retries bounded, and every call runs under the store's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import BlobClient, BlobServiceClient, ContainerClient, LinearRetry

from app.logs import get_logger
from app.storage.errors import (
    Conflict,
    Corrupt,
    NotFound,
    StorageError,
    StoreUnavailable,
    TooLarge,
    deadline,
)
from app.storage.layout import (
    RecordingKey,
    StoredObject,
    check_list_prefix,
    check_part_budget,
    check_unit,
    next_part_needed,
    parse_part_name,
)
from app.storage.settings import StorageSettings

log = get_logger("voicelog.storage")

_POSITION_CONDITIONS = frozenset({"AppendPositionConditionNotMet", "MaxBlobSizeConditionNotMet"})
_CONTENT_SETTINGS = ContentSettings(content_type="application/octet-stream")
_APPEND_ATTEMPTS = 3


class _BoundedRetry(LinearRetry):
    """The SDK's retry with a fixed, short pause, so its retries fit inside the store's deadline."""

    def __init__(self, settings: StorageSettings) -> None:
        super().__init__(backoff=0, retry_total=settings.azure_retry_total, random_jitter_range=0)
        self._pause_s = settings.azure_retry_backoff_s

    def get_backoff_time(self, settings: dict[str, Any]) -> float:  # noqa: ARG002 - fixed pause
        return self._pause_s


def client_options(settings: StorageSettings) -> dict[str, Any]:
    """Keyword arguments of every BlobServiceClient voicelog builds (also used by the benchmark's baseline)."""
    return {
        "api_version": settings.azure_api_version,
        "retry_policy": _BoundedRetry(settings),
        "connection_timeout": settings.azure_connect_timeout_s,
        "read_timeout": settings.timeout_s,
        "max_single_get_size": settings.stream_chunk_bytes,
        "max_chunk_get_size": settings.stream_chunk_bytes,
    }


@dataclass(eq=False)
class _Layout:
    """What this process knows of a recording's parts; `sizes` None means unknown (re-read before use)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sizes: list[int] | None = None
    last_part_blocks: int = 0
    last_part_client: BlobClient | None = None


class AzureBlobStore:
    """One region: one storage account, one container, one append blob per recording part."""

    def __init__(
        self,
        *,
        region: str,
        service: BlobServiceClient,
        container: str,
        settings: StorageSettings,
        owned_credential: AsyncTokenCredential | None = None,
    ) -> None:
        self._region = region
        self._service = service
        self._container: ContainerClient = service.get_container_client(container)
        self._settings = settings
        self._owned_credential = owned_credential
        self._layouts: OrderedDict[str, _Layout] = OrderedDict()
        self._closed = False

    @classmethod
    def from_connection_string(
        cls, *, region: str, connection_string: str, container: str, settings: StorageSettings
    ) -> AzureBlobStore:
        """A store on an account reached by connection string (Azurite, or a shared-key dev account)."""
        service = BlobServiceClient.from_connection_string(connection_string, **client_options(settings))
        return cls(region=region, service=service, container=container, settings=settings)

    @classmethod
    def from_account_url(
        cls,
        *,
        region: str,
        account_url: str,
        container: str,
        settings: StorageSettings,
        credential: AsyncTokenCredential | None = None,
    ) -> AzureBlobStore:
        """A store on an account URL with Entra ID: the given credential, or its own DefaultAzureCredential."""
        owned: AsyncTokenCredential | None = None
        if credential is None:
            from azure.identity.aio import DefaultAzureCredential

            credential = owned = DefaultAzureCredential()
        service = BlobServiceClient(account_url, credential=credential, **client_options(settings))
        return cls(region=region, service=service, container=container, settings=settings,
                   owned_credential=owned)

    @property
    def region(self) -> str:
        return self._region

    @property
    def container_name(self) -> str:
        return str(self._container.container_name)

    # --- the BlobStore calls -------------------------------------------------------------------------

    async def prepare(self) -> None:
        if not self._settings.create_containers:
            return
        async with self._call("prepare"):
            with contextlib.suppress(ResourceExistsError):
                await self._container.create_container()

    async def create(self, key: RecordingKey) -> None:
        async with self._call("create"):
            try:
                await self._blob(key.part_name(0)).create_append_blob(
                    content_settings=_CONTENT_SETTINGS, match_condition=MatchConditions.IfMissing
                )
            except ResourceExistsError:
                if await self._part_sizes(key) == [0]:
                    return  # a retried create
                raise Conflict(f"recording {key.request_id} already holds data in region {self._region}") from None
            layout = self._layout(key)
            if not layout.lock.locked():
                layout.sizes, layout.last_part_blocks, layout.last_part_client = [0], 0, None

    async def append(self, key: RecordingKey, unit: bytes, *, offset: int) -> int:
        check_unit(unit, offset, self._settings)
        async with self._call("append"):
            layout = self._layout(key)
            async with layout.lock:
                return await self._append_locked(key, layout, unit, offset)

    async def read(self, key: RecordingKey, *, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must be >= 0")
        async with self._call("read"):
            sizes = await self._existing_part_sizes(key)
            total = sum(sizes)
            end = total if length is None else min(total, offset + length)
            return await self._read_range(key, sizes, offset, end)

    async def stream(self, key: RecordingKey) -> AsyncIterator[bytes]:
        async with self._call("stream"):
            sizes = await self._existing_part_sizes(key)
        chunk = self._settings.stream_chunk_bytes
        for index, size in enumerate(sizes):
            position = 0
            while position < size:
                length = min(chunk, size - position)
                async with self._call("stream"):
                    data = await self._download(key.part_name(index), position, length)
                position += length
                yield data

    async def length(self, key: RecordingKey) -> int:
        async with self._call("length"):
            return sum(await self._existing_part_sizes(key))

    async def exists(self, key: RecordingKey) -> bool:
        async with self._call("exists"):
            try:
                await self._blob(key.part_name(0)).get_blob_properties()
            except ResourceNotFoundError as exc:
                if _error_code(exc) == "ContainerNotFound":
                    raise
                return False
            return True

    async def delete(self, key: RecordingKey) -> bool:
        async with self._call("delete"):
            indices = sorted(await self._part_listing(key), reverse=True)
            for index in indices:  # the first part goes last: while it exists, the delete is retried
                with contextlib.suppress(ResourceNotFoundError):
                    await self._blob(key.part_name(index)).delete_blob(delete_snapshots="include")
            self._layouts.pop(key.name, None)
        if indices:
            log.info("storage.recording.deleted", region=self._region, request_id=key.request_id,
                     parts=len(indices))
        return bool(indices)

    async def list_objects(self, *, prefix: str = "") -> AsyncIterator[StoredObject]:
        check_list_prefix(prefix)
        pages = self._container.list_blobs(name_starts_with=prefix or None, response_format="xml").by_page()
        hour: str | None = None
        pending: dict[str, list[tuple[int, datetime]]] = {}
        while True:
            async with self._call("list"):
                page = await anext(pages, None)
                blobs = [blob async for blob in page] if page is not None else []
            if page is None:
                break
            for blob in blobs:
                parsed = parse_part_name(str(blob.name))
                if parsed is None:
                    continue
                blob_hour = str(blob.name).rsplit("/", 1)[0]
                if blob_hour != hour:
                    for found in _grouped(hour, pending):
                        yield found
                    hour, pending = blob_hour, {}
                pending.setdefault(parsed.request_id, []).append((parsed.index, blob.creation_time))
        for found in _grouped(hour, pending):
            yield found

    async def check(self) -> None:
        async with self._call("check"):
            await self._container.get_container_properties()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._layouts.clear()
        await self._service.close()
        if self._owned_credential is not None:
            await self._owned_credential.close()

    # --- appends ------------------------------------------------------------------------------------

    async def _append_locked(self, key: RecordingKey, layout: _Layout, unit: bytes, offset: int) -> int:
        for _attempt in range(_APPEND_ATTEMPTS):
            if layout.sizes is None or sum(layout.sizes) != offset:
                await self._refresh(key, layout)
            assert layout.sizes is not None  # noqa: S101 - set by _refresh
            sizes = layout.sizes
            length = sum(sizes)
            if length != offset:
                return await self._confirm_landed(key, sizes, unit, offset, length)
            index = len(sizes) - 1
            if next_part_needed(part_units=layout.last_part_blocks, part_bytes=sizes[index],
                                unit_bytes=len(unit), settings=self._settings):
                check_part_budget(len(sizes), self._settings)
                index += 1
                await self._open_part(key, index)
                sizes.append(0)
                layout.last_part_blocks, layout.last_part_client = 0, None
            if layout.last_part_client is None:
                layout.last_part_client = self._blob(key.part_name(index))
            part_offset = sizes[index]
            layout.sizes = None  # unknown until the service answers (a timeout leaves it unknown)
            try:
                result = await layout.last_part_client.append_block(
                    unit, length=len(unit), appendpos_condition=part_offset,
                    maxsize_condition=self._settings.part_max_bytes,
                )
            except HttpResponseError as exc:
                if _error_code(exc) in _POSITION_CONDITIONS:
                    continue  # someone (an earlier try of ours) moved the end: re-read and decide
                raise
            sizes[index] = part_offset + len(unit)
            layout.sizes = sizes
            blocks = result.get("blob_committed_block_count")
            layout.last_part_blocks = blocks if isinstance(blocks, int) else layout.last_part_blocks + 1
            return offset + len(unit)
        raise Conflict(f"append to {key.request_id} at offset {offset}: the recording kept moving")

    async def _refresh(self, key: RecordingKey, layout: _Layout) -> None:
        sizes = await self._existing_part_sizes(key)
        last = self._blob(key.part_name(len(sizes) - 1))
        properties = await last.get_blob_properties()
        sizes[-1] = int(properties.size)
        layout.sizes = sizes
        layout.last_part_blocks = int(properties.append_blob_committed_block_count or 0)
        layout.last_part_client = last

    async def _open_part(self, key: RecordingKey, index: int) -> None:
        try:
            await self._blob(key.part_name(index)).create_append_blob(
                content_settings=_CONTENT_SETTINGS, match_condition=MatchConditions.IfMissing
            )
        except ResourceExistsError:
            return  # made by an earlier try; the append's position condition settles the rest
        log.info("storage.part.opened", region=self._region, request_id=key.request_id, part=index)

    async def _confirm_landed(self, key: RecordingKey, sizes: list[int], unit: bytes, offset: int,
                              length: int) -> int:
        """A retry of the last append succeeds if its unit is exactly the recording's tail; else Conflict."""
        end = offset + len(unit)
        if end == length and await self._read_range(key, sizes, offset, end) == unit:
            log.info("storage.append.already_landed", region=self._region, request_id=key.request_id,
                     offset=offset, bytes=len(unit))
            return end
        raise Conflict(f"append to {key.request_id} at offset {offset}, but it holds {length} bytes")

    # --- reads and listings -----------------------------------------------------------------------------

    async def _read_range(self, key: RecordingKey, sizes: list[int], start: int, end: int) -> bytes:
        if start >= end:
            return b""
        pieces: list[bytes] = []
        base = 0
        for index, size in enumerate(sizes):
            if start < base + size and end > base:
                part_start = max(start, base) - base
                pieces.append(await self._download(key.part_name(index), part_start,
                                                   min(end, base + size) - base - part_start))
            base += size
            if base >= end:
                break
        return b"".join(pieces)

    async def _download(self, name: str, offset: int, length: int) -> bytes:
        downloader = await self._blob(name).download_blob(offset=offset, length=length)
        data: bytes = await downloader.readall()
        return data

    async def _part_listing(self, key: RecordingKey) -> dict[int, int]:
        """Every stored part of the recording: index -> committed size."""
        found: dict[int, int] = {}
        async for blob in self._container.list_blobs(name_starts_with=key.name, response_format="xml"):
            parsed = parse_part_name(str(blob.name))
            if parsed is not None and parsed.key.name == key.name:
                found[parsed.index] = int(blob.size)
        return found

    async def _part_sizes(self, key: RecordingKey) -> list[int]:
        """Sizes of parts 0..n-1; empty if there is no first part; Corrupt if parts are missing between."""
        listing = await self._part_listing(key)
        if 0 not in listing:
            return []
        sizes = [listing[index] for index in range(len(listing)) if index in listing]
        if len(sizes) != len(listing):
            raise Corrupt(f"recording {key.request_id} in region {self._region} has a gap between its parts")
        return sizes

    async def _existing_part_sizes(self, key: RecordingKey) -> list[int]:
        sizes = await self._part_sizes(key)
        if not sizes:
            raise NotFound(f"no recording {key.request_id} in region {self._region}")
        return sizes

    # --- plumbing -------------------------------------------------------------------------------------

    def _blob(self, name: str) -> BlobClient:
        return self._container.get_blob_client(name)

    def _layout(self, key: RecordingKey) -> _Layout:
        layout = self._layouts.get(key.name)
        if layout is None:
            layout = self._layouts[key.name] = _Layout()
            excess = len(self._layouts) - self._settings.writer_cache_size
            for name in list(self._layouts)[:-1]:
                if excess <= 0:
                    break
                if not self._layouts[name].lock.locked():
                    del self._layouts[name]
                    excess -= 1
        else:
            self._layouts.move_to_end(key.name)
        return layout

    @contextlib.asynccontextmanager
    async def _call(self, what: str) -> AsyncIterator[None]:
        """One store call: under the deadline, with every SDK error turned into a typed StorageError."""
        if self._closed:
            raise StoreUnavailable(f"{what} in region {self._region}: store closed")
        async with deadline(self._settings.timeout_s, f"{what} in region {self._region}"):
            try:
                yield
            except StorageError:
                raise
            except (AzureError, OSError) as exc:
                error = _typed_error(exc, f"{what} in region {self._region}")
                if isinstance(error, StoreUnavailable):
                    log.warning("storage.unavailable", region=self._region, op=what, reason=error.detail)
                raise error from exc


def _error_code(exc: AzureError) -> str:
    """The service's x-ms-error-code, which the storage SDK attaches to the errors it raises."""
    code = getattr(exc, "error_code", None)
    return str(code) if code else ""


def _typed_error(exc: AzureError | OSError, what: str) -> StorageError:
    if not isinstance(exc, HttpResponseError):
        return StoreUnavailable(f"{what}: {type(exc).__name__}")
    code = _error_code(exc)
    status = exc.status_code or 0
    reason = f"{what}: {code or 'HTTP'} ({status})"
    if code == "ContainerNotFound":
        return StoreUnavailable(reason)
    if status == 404:
        return NotFound(reason)
    if status in (409, 412):
        return Conflict(reason)
    if status == 413 or code == "RequestBodyTooLarge":
        return TooLarge(reason)
    return StoreUnavailable(reason)


def _grouped(hour: str | None, pending: dict[str, list[tuple[int, datetime]]]) -> list[StoredObject]:
    """The recordings of one hour directory, one entry per recording however many parts it has."""
    if hour is None:
        return []
    found: list[StoredObject] = []
    for request_id in sorted(pending):
        parts = sorted(pending[request_id])
        parsed = parse_part_name(f"{hour}/{request_id}")
        if parsed is not None:
            found.append(StoredObject(name=f"{hour}/{request_id}", request_id=request_id, hour=parsed.hour,
                                      created_at=parts[0][1], parts=len(parts)))
    return found
