"""The one interface the rest of voicelog uses for recordings at rest; one store per region (C3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from app.storage.layout import RecordingKey, StoredObject


@runtime_checkable
class BlobStore(Protocol):
    """A region's recordings: append-only objects of opaque, already-sealed bytes.

    Every call finishes within the configured deadline or raises StoreUnavailable. The store keeps bytes,
    not unit boundaries: the sealed-segment format delimits itself. Offsets are logical, across parts.
    """

    @property
    def region(self) -> str:
        """The region this store serves."""
        ...

    async def prepare(self) -> None:
        """Make the region's container/directory ready if settings allow; idempotent."""
        ...

    async def create(self, key: RecordingKey) -> None:
        """Create an empty recording. Retry-safe: an existing empty one is fine; one with data is a Conflict."""
        ...

    async def append(self, key: RecordingKey, unit: bytes, *, offset: int) -> int:
        """Append one unit where the recording is `offset` bytes long; return the length after it.

        A retry of the last append that already landed (same offset, same bytes, and nothing after it)
        succeeds without writing again; any other mismatch raises Conflict, so data is never duplicated
        or reordered. Appends to one recording come from one writer, in order. NotFound before
        `create`; TooLarge for a unit over `max_unit_bytes` or past the last part.
        """
        ...

    async def read(self, key: RecordingKey, *, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes `[offset, offset+length)` of the recording (to its end when `length` is None or runs past it)."""
        ...

    def stream(self, key: RecordingKey) -> AsyncIterator[bytes]:
        """The whole recording, part after part, in chunks of `stream_chunk_bytes`."""
        ...

    async def length(self, key: RecordingKey) -> int:
        """Committed length in bytes, over all parts."""
        ...

    async def exists(self, key: RecordingKey) -> bool:
        """Whether the recording exists in this region."""
        ...

    async def delete(self, key: RecordingKey) -> bool:
        """Delete the recording and every part; True if anything was there. Idempotent."""
        ...

    def list_objects(self, *, prefix: str = "") -> AsyncIterator[StoredObject]:
        """Every recording under a time prefix (`''`, `'2025/'`, ... `'2025/01/02/03/'`), for the orphan sweep."""
        ...

    async def check(self) -> None:
        """Raise StoreUnavailable unless the region's container/directory answers."""
        ...

    async def close(self) -> None:
        """Release clients and threads; the store is not used afterwards."""
        ...
