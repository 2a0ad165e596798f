"""C2: names, metadata, tags, logs and error messages of the store never carry what was appended."""

from __future__ import annotations

import base64
import secrets

import pytest
from azure.storage.blob.aio import BlobServiceClient

from app.storage.errors import Conflict
from app.storage.protocol import BlobStore
from tests.fixtures.blob import AzuriteRegions
from tests.storage.conftest import Backend
from tests.storage.samples import REGION, new_key


def _forms(marker: bytes) -> list[str]:
    """The marker as it could leak: raw, base64, url-safe base64, hex."""
    return [marker.decode(), base64.b64encode(marker).decode(), base64.urlsafe_b64encode(marker).decode(),
            marker.hex()]


async def _azure_metadata(azurite: AzuriteRegions, container: str) -> list[str]:
    found: list[str] = []
    async with BlobServiceClient.from_connection_string(azurite.servers[REGION].connection_string) as service:
        client = service.get_container_client(container)
        found.append(repr((await client.get_container_properties()).metadata))
        async for blob in client.list_blobs(include=["metadata", "tags"]):
            found.append(repr((blob.name, blob.metadata, blob.tags, blob.content_settings.content_type)))
            assert not blob.metadata
            assert not blob.tags
    return found


async def test_names_metadata_logs_and_errors_carry_no_content(
    backend: Backend, store: BlobStore, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    marker = b"VOICELOG-CONTENT-MARKER-" + secrets.token_hex(8).encode()
    key = new_key()
    await store.create(key)
    offset = 0
    for i in range(6):  # two parts
        offset = await store.append(key, marker + bytes([i]) * 50, offset=offset)
    errors: list[str] = []
    try:
        await store.append(key, marker * 3, offset=0)
    except Conflict as exc:
        errors.append(str(exc))
    sinks = [*await backend.names(), *errors, caplog.text]
    sinks.extend([o.name + o.request_id async for o in store.list_objects()])
    if backend.kind == "azure":
        container = next(r for r in request.getfixturevalue("azurite_region_settings")
                         if r.name == REGION).blob_container
        sinks.extend(await _azure_metadata(request.getfixturevalue("azurite"), container))
    assert errors
    assert any(key.request_id in sink for sink in sinks)  # the scan does see the names
    for form in _forms(marker):
        assert not [sink for sink in sinks if form in sink]
