"""Storage errors: typed, with a stable code, and never carrying content (C2).

They are not `AppError`s: storage knows nothing of HTTP. The domain that calls storage decides what a
caller sees (the recorder marks a recording incomplete, C8; playback answers its own way).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import ClassVar


class StorageError(Exception):
    """Base of every storage error. `detail` names the operation, region and object, never data."""

    code: ClassVar[str] = "storage_error"
    title: ClassVar[str] = "Storage error"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title


class StoreUnavailable(StorageError):
    """The store did not answer in time, refused the connection, or is misconfigured; retry later."""

    code = "store_unavailable"
    title = "The blob store is unavailable"


class Conflict(StorageError):
    """The object is not in the state the call expected (an append at the wrong offset, a create over data)."""

    code = "store_conflict"
    title = "The object is not in the expected state"


class NotFound(StorageError):
    """The object does not exist in this region."""

    code = "store_not_found"
    title = "No such object"


class TooLarge(StorageError):
    """A unit is bigger than one append may carry, or the object has used all of its parts."""

    code = "store_too_large"
    title = "Too large for the store"


class Corrupt(StorageError):
    """Stored bytes fail their checksum, or an object's parts do not line up; never repaired silently."""

    code = "store_corrupt"
    title = "The stored object is damaged"


class UnknownRegion(StorageError):
    """No store is configured for this region; there is never a fallback to another region (C3)."""

    code = "unknown_region"
    title = "No store for this region"


@contextlib.asynccontextmanager
async def deadline(seconds: float, what: str) -> AsyncIterator[None]:
    """Run the body under a timeout; a timeout becomes StoreUnavailable, so no caller ever hangs (C8)."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        raise StoreUnavailable(f"{what}: no answer within {seconds:g} s") from exc
