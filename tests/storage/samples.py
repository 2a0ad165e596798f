"""Sample keys, units and small limits for the storage tests."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from app.storage.layout import RecordingKey
from app.storage.settings import StorageSettings

REGION = "eastus"

SMALL_LIMITS: dict[str, Any] = {
    "timeout_s": 5.0,
    "max_unit_bytes": 64 * 1024,
    "part_max_units": 4,
    "part_max_bytes": 1024 * 1024,
    "max_parts": 16,
    "stream_chunk_bytes": 1000,
    "azure_retry_backoff_s": 0.1,
    "create_containers": True,
}


def small_settings(**overrides: Any) -> StorageSettings:
    return StorageSettings(**{**SMALL_LIMITS, **overrides})


def new_key(started_at: datetime | None = None) -> RecordingKey:
    return RecordingKey(request_id=f"req-{secrets.token_hex(8)}",
                        started_at=started_at or datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC))


def unit(index: int, size: int = 300) -> bytes:
    """A distinct unit: its index in 4 bytes, then random bytes (no two units are equal)."""
    return index.to_bytes(4, "big") + secrets.token_bytes(size - 4)
