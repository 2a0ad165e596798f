"""Key-encryption keys by (region, UTC hour): the bucket, the provider protocol, and the region router.

A KEK wraps the data keys of every recording that started in its region during its hour. Destroying it
(C7) makes every copy of those wrapped keys, and so of those recordings, unreadable at once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from app.vault.datakey import BytesLike
from app.vault.errors import KeyDestroyed, UnknownRegion

REGION_PATTERN = re.compile(r"^[a-z0-9]{2,32}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HOUR = timedelta(hours=1)


def hour_label(instant: datetime) -> str:
    """The `yyyymmddhh` label of the UTC hour `instant` (aware) falls in: a bucket's label, and, being fixed
    width, ordered as the hours are."""
    return instant.astimezone(UTC).strftime("%Y%m%d%H")


@dataclass(frozen=True, order=True, slots=True)
class KeyBucket:
    """One KEK's scope: a region and the UTC hour that recordings in it started."""

    region: str
    hour: datetime

    def __post_init__(self) -> None:
        if not REGION_PATTERN.fullmatch(self.region):
            raise ValueError("region must match ^[a-z0-9]{2,32}$")
        if self.hour.tzinfo is None or self.hour.utcoffset() != timedelta(0):
            raise ValueError("bucket hour must be an aware UTC datetime")
        if self.hour.minute or self.hour.second or self.hour.microsecond:
            raise ValueError("bucket hour must be on the hour")
        if not 0 <= self.hours_since_epoch < 2**32:
            raise ValueError("bucket hour out of range")

    @classmethod
    def of(cls, region: str, instant: datetime) -> KeyBucket:
        """The bucket of a recording that started at `instant` (aware) in `region`."""
        if instant.tzinfo is None:
            raise ValueError("naive datetime given for a key bucket")
        utc = instant.astimezone(UTC)
        return cls(region, utc.replace(minute=0, second=0, microsecond=0))

    @classmethod
    def from_hours(cls, region: str, hours_since_epoch: int) -> KeyBucket:
        return cls(region, _EPOCH + timedelta(hours=hours_since_epoch))

    @property
    def hours_since_epoch(self) -> int:
        return int((self.hour - _EPOCH) // _HOUR)

    @property
    def label(self) -> str:
        """`yyyymmddhh`, as used in key names and file names."""
        return hour_label(self.hour)

    @classmethod
    def from_label(cls, region: str, label: str) -> KeyBucket:
        if not re.fullmatch(r"\d{10}", label):
            raise ValueError("a bucket label is yyyymmddhh")
        # Sliced, not strptime: the purge reads every live bucket's label on each run (a tenth of the cost).
        return cls(region, datetime(int(label[:4]), int(label[4:6]), int(label[6:8]), int(label[8:]), tzinfo=UTC))

    def expires_at(self, lifetime: timedelta) -> datetime:
        """When the bucket's KEK must be gone: its hour's start plus the lifetime (C7)."""
        return self.hour + lifetime

    def expired(self, now: datetime, lifetime: timedelta) -> bool:
        return now >= self.expires_at(lifetime)

    def __str__(self) -> str:
        return f"{self.region}/{self.label}"


@dataclass(frozen=True, slots=True)
class KeyDestruction:
    """Evidence that a bucket's KEK was destroyed: what, when, where. Never key material."""

    bucket: KeyBucket
    destroyed_at: datetime
    provider: str
    key_name: str


def erasure_id(context: bytes) -> bytes:
    """16 bytes naming one wrapped key's context in an erasure record, without revealing the context."""
    return hashlib.sha256(b"voicelog/erasure\x00" + context).digest()[:16]


@runtime_checkable
class Keyring(Protocol):
    """A KEK provider. `context` is associated data: an unwrap under any other context fails (C3)."""

    provider: str

    async def get_or_create(self, bucket: KeyBucket) -> None:
        """Make sure the bucket's KEK exists. KeyDestroyed if it was destroyed or the bucket is past its life."""
        ...

    async def wrap(self, bucket: KeyBucket, key: BytesLike, context: bytes) -> bytes:
        """Seal `key` under the bucket's KEK, bound to `context`. KeyNotFound/KeyDestroyed without a KEK."""
        ...

    async def unwrap(self, bucket: KeyBucket, wrapped: bytes, context: bytes) -> bytearray:
        """Open a key sealed by `wrap`. UnwrapFailed for another context or tampered bytes; KeyDestroyed
        once the bucket is destroyed or this context was erased; KeyNotFound if the KEK never existed."""
        ...

    async def erase(self, bucket: KeyBucket, context: bytes) -> None:
        """Refuse, from now on, to unwrap anything bound to `context` (one recording's erasure)."""
        ...

    async def destroy(self, bucket: KeyBucket) -> KeyDestruction:
        """Destroy the bucket's KEK for good (idempotent). Every key it wrapped, in every copy, is lost."""
        ...

    async def live_buckets(self, *, started_before: datetime) -> list[KeyBucket]:
        """Buckets whose KEK still exists and whose hour started before `started_before` (retention sweep)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def refuse_expired(bucket: KeyBucket, now: datetime, lifetime: timedelta) -> None:
    """No KEK is ever (re)made for a bucket past its life, so a late writer cannot resurrect one (C7)."""
    if bucket.expired(now, lifetime):
        raise KeyDestroyed("the bucket is past its lifetime", region=bucket.region, hour=bucket.hour)


class RegionKeyrings:
    """Routes each bucket to its region's keyring; a region without one is refused (C3)."""

    provider = "regions"

    def __init__(self, keyrings: Mapping[str, Keyring]) -> None:
        self._keyrings = dict(keyrings)

    def for_region(self, region: str) -> Keyring:
        try:
            return self._keyrings[region]
        except KeyError:
            raise UnknownRegion(f"no keyring for region {region!r}") from None

    @property
    def regions(self) -> list[str]:
        return sorted(self._keyrings)

    async def get_or_create(self, bucket: KeyBucket) -> None:
        await self.for_region(bucket.region).get_or_create(bucket)

    async def wrap(self, bucket: KeyBucket, key: BytesLike, context: bytes) -> bytes:
        return await self.for_region(bucket.region).wrap(bucket, key, context)

    async def unwrap(self, bucket: KeyBucket, wrapped: bytes, context: bytes) -> bytearray:
        return await self.for_region(bucket.region).unwrap(bucket, wrapped, context)

    async def erase(self, bucket: KeyBucket, context: bytes) -> None:
        await self.for_region(bucket.region).erase(bucket, context)

    async def destroy(self, bucket: KeyBucket) -> KeyDestruction:
        return await self.for_region(bucket.region).destroy(bucket)

    async def live_buckets(self, *, started_before: datetime) -> list[KeyBucket]:
        found: set[KeyBucket] = set()
        for region, keyring in self._keyrings.items():
            found.update(b for b in await keyring.live_buckets(started_before=started_before) if b.region == region)
        return sorted(found)

    async def aclose(self) -> None:
        seen: set[int] = set()
        for keyring in self._keyrings.values():
            if id(keyring) not in seen:
                seen.add(id(keyring))
                await keyring.aclose()
