"""Storage knobs beyond the per-region ones in `app.config.RegionSettings`: deadlines, part limits, SDK pins."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

MIB = 1024 * 1024
AZURE_APPEND_BLOB_MAX_BLOCKS = 50_000
"""Azure's cap on committed blocks in one append blob; a part must roll over before it."""


class StorageSettings(BaseModel):
    """How every region's store behaves. Same limits for the local and the Azure store, so rollover is identical."""

    timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Deadline of one store call (create, append, ranged read, length, delete, one chunk of a "
        "stream, one page of a listing). Past it the call raises StoreUnavailable; nothing waits longer.",
    )
    ready_timeout_s: float = Field(
        default=3.0, gt=0, description="Deadline of one region's readiness probe (`RegionRouter.check_ready`)."
    )
    max_unit_bytes: int = Field(
        default=4 * MIB,
        ge=1,
        le=100 * MIB,
        description="Largest unit one append accepts; bigger raises TooLarge. 4 MiB is the Append Block "
        "limit of every Azure service version (100 MiB from 2022-11-02 on).",
    )
    part_max_units: int = Field(
        default=49_000,
        ge=1,
        le=AZURE_APPEND_BLOB_MAX_BLOCKS,
        description="Units in one part before the recording continues in its next part (`<name>.1`, ...): "
        "below Azure's 50,000-block cap of an append blob, with headroom. Tests set it small.",
    )
    part_max_bytes: int = Field(
        default=4 * 1024 * MIB,
        ge=1,
        description="Bytes in one part before the next part starts; also sent as the append blob's max-size "
        "condition, so a part can never grow past it.",
    )
    max_parts: int = Field(
        default=64, ge=1, le=10_000, description="Parts per recording; an append past the last one raises TooLarge."
    )
    stream_chunk_bytes: int = Field(
        default=4 * MIB, ge=1, description="Size of the chunks `stream()` yields (the last one may be shorter)."
    )
    local_io_threads: int = Field(
        default=16, ge=1, le=256, description="Local store: threads doing file I/O and fsync for all regions' calls."
    )
    writer_cache_size: int = Field(
        default=1024,
        ge=1,
        description="Recordings whose layout (parts, lengths) a store keeps in memory; older ones are re-read.",
    )
    azure_api_version: str = Field(
        default="2025-11-05",
        description="Blob service REST API version every request is pinned to (x-ms-version).",
    )
    azure_retry_total: int = Field(
        default=2,
        ge=0,
        le=10,
        description="SDK retries of one request on a transient error. Retries stay inside `timeout_s`; an "
        "append retried by the SDK is still safe (append-position condition).",
    )
    azure_retry_backoff_s: float = Field(
        default=0.5, ge=0, description="Pause between two SDK retries (linear, no jitter)."
    )
    azure_connect_timeout_s: float = Field(
        default=3.0, gt=0, description="TCP+TLS connect timeout of one request to the storage account."
    )
    local_min_free_bytes: int = Field(
        default=1024 * MIB,
        ge=0,
        description="Local store: below this many free bytes on the filesystem of a region's directory, "
        "/readyz reports that region's store as `low_space` (readiness stays 200: calls do not need the "
        "store) and `voicelog_storage_free_bytes` shows it, before appends start failing on a full disk. "
        "0 turns the check off. Azure stores have no such limit.",
    )
    create_containers: bool = Field(
        default=False,
        description="`prepare()` creates a missing container (Azurite, dev). In production the deployment "
        "template creates it and the service identity needs no container-level rights.",
    )

    @model_validator(mode="after")
    def _units_fit_in_parts(self) -> StorageSettings:
        if self.part_max_bytes < self.max_unit_bytes:
            raise ValueError("part_max_bytes must be at least max_unit_bytes, or a unit could never be stored")
        return self
