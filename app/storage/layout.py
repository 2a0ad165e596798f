"""Where a recording lives inside its region's store, and when it moves on to its next part.

Names are `{yyyy}/{mm}/{dd}/{hh}/{request_id}` from the UTC hour the recording started; further parts are
`{name}.1`, `{name}.2`, ... Names carry the server-made request ID and the start hour, never content (C2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property

from app.request_id import STORED_NAME, is_stored_name
from app.storage.errors import TooLarge
from app.storage.settings import StorageSettings

_OBJECT_NAME = re.compile(
    rf"(?P<y>\d{{4}})/(?P<m>\d{{2}})/(?P<d>\d{{2}})/(?P<h>\d{{2}})/(?P<rid>{STORED_NAME.pattern})"
    r"(?:\.(?P<part>[1-9]\d{0,4}))?"
)
_LIST_PREFIX = re.compile(r"(\d{4}/((\d{2}/)((\d{2}/)(\d{2}/)?)?)?)?")


@dataclass(frozen=True)
class RecordingKey:
    """One recording inside its region: its request ID and the time it started (any zone; named in UTC).

    `request_id` is the name's last segment: a `RequestId` for everything the relay records, or a name in
    the wider legacy shape (`app.request_id.STORED_NAME`) that a listing reads back; both stay readable.
    """

    request_id: str
    started_at: datetime

    def __post_init__(self) -> None:
        if not is_stored_name(self.request_id):
            raise ValueError("request_id must be 8-128 characters of [A-Za-z0-9_-]")
        if self.started_at.tzinfo is None:
            raise ValueError("started_at must be timezone-aware")

    @cached_property
    def hour(self) -> datetime:
        """The UTC hour bucket the recording belongs to."""
        return self.started_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)

    @cached_property
    def name(self) -> str:
        """The object name of the recording (its first part)."""
        return f"{self.hour:%Y/%m/%d/%H}/{self.request_id}"

    def part_name(self, index: int) -> str:
        """Name of part `index`: the recording's name itself for part 0, `{name}.{index}` after it."""
        if index < 0:
            raise ValueError("part index must be >= 0")
        return self.name if index == 0 else f"{self.name}.{index}"


@dataclass(frozen=True)
class PartName:
    """A stored name taken apart: which recording, and which of its parts."""

    request_id: str
    hour: datetime
    index: int

    @property
    def key(self) -> RecordingKey:
        return RecordingKey(request_id=self.request_id, started_at=self.hour)


def parse_part_name(name: str) -> PartName | None:
    """The recording and part a stored name stands for; None for anything that is not ours."""
    match = _OBJECT_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        hour = datetime(int(match["y"]), int(match["m"]), int(match["d"]), int(match["h"]), tzinfo=UTC)
    except ValueError:
        return None
    return PartName(request_id=match["rid"], hour=hour, index=int(match["part"] or 0))


def check_list_prefix(prefix: str) -> str:
    """A listing prefix must be a whole time path (`""`, `2025/`, `2025/01/`, ... `2025/01/02/03/`)."""
    if not _LIST_PREFIX.fullmatch(prefix):
        raise ValueError("prefix must be '' or a time path like '2025/01/02/' ending in '/'")
    return prefix


@dataclass(frozen=True)
class StoredObject:
    """One recording found by a listing (for the orphan sweep): its name, ID, hour and creation time."""

    name: str
    request_id: str
    hour: datetime
    created_at: datetime
    parts: int

    @property
    def key(self) -> RecordingKey:
        return RecordingKey(request_id=self.request_id, started_at=self.hour)


def check_unit(unit: bytes, offset: int, settings: StorageSettings) -> None:
    """Reject a unit no store may take: empty, negative offset, or bigger than one append carries."""
    if not unit:
        raise ValueError("a unit must not be empty")
    if offset < 0:
        raise ValueError("offset must be >= 0")
    if len(unit) > settings.max_unit_bytes:
        raise TooLarge(f"unit of {len(unit)} bytes exceeds max_unit_bytes={settings.max_unit_bytes}")


def next_part_needed(*, part_units: int, part_bytes: int, unit_bytes: int, settings: StorageSettings) -> bool:
    """True when a unit must open the next part: the current one is full by count or would overflow by size.

    The one rollover rule of both stores: the same settings give the same parts on disk and in Azure.
    """
    if part_units == 0:
        return False  # an empty part always takes the unit (unit size <= part size is validated)
    return part_units >= settings.part_max_units or part_bytes + unit_bytes > settings.part_max_bytes


def check_part_budget(parts_in_use: int, settings: StorageSettings) -> None:
    """Raise TooLarge when opening one more part would pass `max_parts`."""
    if parts_in_use >= settings.max_parts:
        raise TooLarge(f"recording has used all {settings.max_parts} parts")
