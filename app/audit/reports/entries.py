"""Reading entries for reports: bounded by time, action and the chain head the report is computed at."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.actions import AuditAction, JSONValue, parse_detail_time
from app.audit.service import ENTRIES, INBOX
from app.errors import InvalidInput

ID_CHUNK: Final = 500


class InvalidPeriod(InvalidInput):
    code = "invalid_report_period"
    title = "The report period is not valid"


@dataclass(frozen=True)
class Period:
    """Whole UTC days, both ends included: [first 00:00, last + 1 day 00:00)."""

    first: date
    last: date

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise InvalidPeriod("`to` is before `from`.")
        if (self.last - self.first).days > 366:
            raise InvalidPeriod("A report covers at most 367 days.")

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, time(), tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return datetime.combine(self.last + timedelta(days=1), time(), tzinfo=UTC)

    def days(self) -> list[date]:
        return [self.first + timedelta(days=n) for n in range((self.last - self.first).days + 1)]

    def to_json(self) -> dict[str, JSONValue]:
        return {"from": self.first.isoformat(), "to": self.last.isoformat()}


async def first_entry_day(session: AsyncSession) -> date | None:
    """The UTC day of the audit trail's first entry, chained or still queued: the day the service began to do
    anything. None on a trail with no entry yet. A day before it has nothing to report (C7's daily reports
    start there, not `report_catch_up_days` before a fresh install's first start)."""
    # One statement, so one snapshot: read apart, an entry chained between the two reads (moved from the inbox
    # to the chain in one transaction) was in neither, and a fresh trail read as empty.
    firsts = select(func.min(ENTRIES.c.recorded_at).label("at")).union_all(
        select(func.min(INBOX.c.recorded_at).label("at"))).subquery()
    first: datetime | None = await session.scalar(select(func.min(firsts.c.at)))
    return first.date() if first is not None else None


@dataclass(frozen=True)
class ReportEntry:
    seq: int
    at: datetime
    actor_type: str
    actor_id: str
    action: str
    ticket: str | None
    request_id: str | None
    grant: str | None
    saw: str | None
    resource: str | None
    detail: dict[str, Any]

    def text(self, key: str) -> str | None:
        value = self.detail.get(key)
        return value if isinstance(value, str) else None

    def number(self, key: str) -> int | None:
        value = self.detail.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def time(self, key: str) -> datetime | None:
        value = self.text(key)
        if value is None:
            return None
        try:
            return parse_detail_time(value)
        except ValueError:
            return None


COLUMNS: Final = (
    ENTRIES.c.seq, ENTRIES.c.recorded_at, ENTRIES.c.actor_type, ENTRIES.c.actor_id, ENTRIES.c.action,
    ENTRIES.c.ticket_id, ENTRIES.c.request_id, ENTRIES.c.grant_id, ENTRIES.c.saw_id, ENTRIES.c.resource_id,
    ENTRIES.c.detail,
)


def _entry(row: Sequence[Any]) -> ReportEntry:
    try:
        detail = json.loads(row[10])
    except ValueError:
        detail = {}
    return ReportEntry(int(row[0]), row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9],
                       detail if isinstance(detail, dict) else {})


async def load_entries(
    session: AsyncSession,
    *,
    actions: Iterable[AuditAction],
    upto_seq: int,
    since: datetime | None = None,
    until: datetime | None = None,
    grants: Iterable[str] | None = None,
    request_ids: Iterable[str] | None = None,
) -> list[ReportEntry]:
    """Entries of `actions` with seq <= upto_seq, optionally within [since, until) and for given ids."""
    query = select(*COLUMNS).where(
        ENTRIES.c.action.in_([a.value for a in actions]), ENTRIES.c.seq <= upto_seq
    ).order_by(ENTRIES.c.seq)
    if since is not None:
        query = query.where(ENTRIES.c.recorded_at >= since)
    if until is not None:
        query = query.where(ENTRIES.c.recorded_at < until)
    if grants is None and request_ids is None:
        return [_entry(row) for row in (await session.execute(query)).all()]
    column, ids = (ENTRIES.c.grant_id, sorted(set(grants))) if grants is not None else \
        (ENTRIES.c.request_id, sorted(set(request_ids or ())))
    found: dict[int, ReportEntry] = {}
    for start in range(0, len(ids), ID_CHUNK):
        rows = (await session.execute(query.where(column.in_(ids[start:start + ID_CHUNK])))).all()
        found.update((int(row[0]), _entry(row)) for row in rows)
    return [found[seq] for seq in sorted(found)]
