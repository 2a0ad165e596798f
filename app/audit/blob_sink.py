"""Checkpoints anchored in Azure append blobs (C6): the production `CheckpointSink`.

Checkpoint n is one JSON line in the append blob `<prefix><first>.jsonl`, where `first` is the first number
of its run of `PER_BLOB` (an append blob holds at most 50,000 blocks). Each line is one `append_block` with
the append-position condition, so two replicas exporting at once never write a line twice: the loser's
condition fails, it re-reads the blob's tail and finds the line there. The container carries a time-based
immutability policy with protected append writes (ops/deploy/storage.bicep): blocks can be added, nothing
can be overwritten or deleted, not even by the account's administrators once the policy is locked.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any, Final

from azure.core import MatchConditions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from app.audit.checkpoints import TAIL_BYTES, Checkpoint, CheckpointExportError
from app.audit.settings import AuditSettings

PER_BLOB: Final = 10_000
_ATTEMPTS: Final = 8


def _line(checkpoint: Checkpoint) -> bytes:
    return (json.dumps(checkpoint.to_json(), sort_keys=True) + "\n").encode()


def _parse(data: bytes, *, cut: bool) -> list[Checkpoint]:
    """Complete lines of `data`; with `cut` the first piece may be the end of an earlier line."""
    lines = data.decode("utf-8").split("\n")[:-1]
    if cut:
        lines = lines[1:]
    try:
        return [Checkpoint.from_json(json.loads(line)) for line in lines if line.strip()]
    except (ValueError, KeyError) as exc:
        raise CheckpointExportError(f"the checkpoint blob holds a line that is not a checkpoint: {exc}") from exc


class AzureBlobCheckpointSink:
    def __init__(self, service: BlobServiceClient, container: str, prefix: str = "checkpoints/",
                 owned_credential: AsyncTokenCredential | None = None) -> None:
        self._service = service
        self._container: ContainerClient = service.get_container_client(container)
        self._prefix = prefix
        self._owned_credential = owned_credential
        self._tail: tuple[str, int, int] | None = None  # blob name, its size, last number in it (cache)

    @classmethod
    def from_settings(cls, settings: AuditSettings) -> AzureBlobCheckpointSink:
        if settings.checkpoint_blob_connection_string is not None:
            service = BlobServiceClient.from_connection_string(
                settings.checkpoint_blob_connection_string.get_secret_value())
            return cls(service, settings.checkpoint_blob_container, settings.checkpoint_blob_prefix)
        assert settings.checkpoint_blob_account_url is not None  # noqa: S101 - enforced by AuditSettings
        from azure.identity.aio import DefaultAzureCredential

        credential = DefaultAzureCredential()
        service = BlobServiceClient(settings.checkpoint_blob_account_url, credential=credential)
        return cls(service, settings.checkpoint_blob_container, settings.checkpoint_blob_prefix,
                   owned_credential=credential)

    def blob_name(self, number: int) -> str:
        first = (number - 1) // PER_BLOB * PER_BLOB + 1
        return f"{self._prefix}{first:012d}.jsonl"

    async def create_container(self) -> None:
        """Tests and the embedded mode only; production containers come from Bicep (with their policy)."""
        try:
            await self._container.create_container()
        except ResourceExistsError:
            pass
        except AzureError as exc:
            raise CheckpointExportError(f"cannot create the checkpoint container: {type(exc).__name__}") from exc

    async def _names(self) -> list[str]:
        names = [str(b.name) async for b in self._container.list_blobs(name_starts_with=self._prefix)]
        return sorted(n for n in names if n.endswith(".jsonl"))

    async def _download(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        downloader = await self._container.get_blob_client(name).download_blob(offset=offset, length=length)
        data: bytes = await downloader.readall()
        return data

    async def _read_tail(self, name: str) -> tuple[int, int]:
        """(size, last checkpoint number) of one blob; the number is 0 when it holds no line yet."""
        size = int((await self._container.get_blob_client(name).get_blob_properties()).size)
        if size == 0:
            return 0, 0
        start = max(0, size - TAIL_BYTES)
        found = _parse(await self._download(name, start, size - start), cut=start > 0)
        if not found:
            found = _parse(await self._download(name), cut=False)
        return size, (found[-1].number if found else 0)

    async def read_all(self) -> list[Checkpoint]:
        try:
            found: list[Checkpoint] = []
            for name in await self._names():
                found.extend(_parse(await self._download(name), cut=False))
            return found
        except AzureError as exc:
            raise CheckpointExportError(f"cannot read the checkpoint blobs: {type(exc).__name__}") from exc

    async def last_number(self) -> int:
        try:
            for name in reversed(await self._names()):
                size, last = await self._read_tail(name)
                if last:
                    self._tail = (name, size, last)
                    return last
            return 0
        except AzureError as exc:
            raise CheckpointExportError(f"cannot read the checkpoint blobs: {type(exc).__name__}") from exc

    async def append(self, checkpoints: Sequence[Checkpoint]) -> int:
        written = 0
        try:
            for checkpoint in sorted(checkpoints, key=lambda c: c.number):
                written += await self._append_one(checkpoint)
        except AzureError as exc:
            raise CheckpointExportError(f"cannot append to the checkpoint blob: {type(exc).__name__}") from exc
        return written

    async def _append_one(self, checkpoint: Checkpoint) -> int:
        name = self.blob_name(checkpoint.number)
        blob = self._container.get_blob_client(name)
        line = _line(checkpoint)
        for _ in range(_ATTEMPTS):
            if self._tail is not None and self._tail[0] == name:
                size, last = self._tail[1], self._tail[2]
            else:
                try:
                    size, last = await self._read_tail(name)
                except ResourceNotFoundError:
                    with contextlib.suppress(ResourceExistsError):  # another replica made it
                        await blob.create_append_blob(match_condition=MatchConditions.IfMissing)
                    size, last = 0, 0
            if checkpoint.number <= last:
                return 0  # present already (another replica exported it)
            expected = last + 1 if last else (checkpoint.number - 1) // PER_BLOB * PER_BLOB + 1
            if checkpoint.number != expected:
                raise CheckpointExportError(f"checkpoint {checkpoint.number} would follow {expected - 1} in {name}")
            try:
                await blob.append_block(line, length=len(line), appendpos_condition=size)
            except HttpResponseError as exc:
                if _error_code(exc) == "AppendPositionConditionNotMet":
                    self._tail = None  # someone else appended: re-read the tail and decide again
                    continue
                raise
            self._tail = (name, size + len(line), checkpoint.number)
            return 1
        raise CheckpointExportError(f"checkpoint {checkpoint.number}: the blob {name} kept moving")

    async def close(self) -> None:
        await self._service.close()
        if self._owned_credential is not None:
            await self._owned_credential.close()


def _error_code(exc: Any) -> str:
    code = getattr(exc, "error_code", None)
    return str(code) if code else ""
