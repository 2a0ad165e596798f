"""Retention audit for a period, per region and UTC day (C7), from the audit entries alone.

Per (region, day): recordings started (by their `started_at`), purged (by purge entry time) and why, the
largest and smallest age at purge, KEK buckets and DEKs destroyed, and what was overdue: recordings and
KEK buckets whose deadline (start + retention) fell on that day but that were destroyed late or not yet
(as of the report's `as_of`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.actions import AuditAction, JSONValue
from app.audit.canonical import canonical_time
from app.audit.reports.entries import Period, ReportEntry, load_entries
from app.audit.service import ChainHead

# Entries are written close to the times they state; this margin catches late writers and skewed clocks.
CLOCK_MARGIN: Final = timedelta(days=2)


@dataclass
class DayRow:
    recordings_started: int = 0
    recordings_purged: int = 0
    purged_for_retention: int = 0
    purged_for_erasure: int = 0
    max_age_at_purge_s: int | None = None
    min_age_at_purge_s: int | None = None
    purged_over_age: int = 0
    kek_buckets_destroyed: int = 0
    deks_destroyed: int = 0
    overdue_recordings: int = 0
    overdue_kek_buckets: int = 0
    overdue_request_ids: list[str] = field(default_factory=list)

    def add_age(self, age_s: int) -> None:
        self.max_age_at_purge_s = age_s if self.max_age_at_purge_s is None else max(self.max_age_at_purge_s, age_s)
        self.min_age_at_purge_s = age_s if self.min_age_at_purge_s is None else min(self.min_age_at_purge_s, age_s)


def _t(moment: datetime | None) -> str | None:
    return None if moment is None else canonical_time(moment)


def _bucket_start(bucket: str) -> datetime | None:
    try:
        return datetime.strptime(bucket, "%Y-%m-%dT%H").replace(tzinfo=UTC)
    except ValueError:
        return None


async def build_retention_audit(
    *, session: AsyncSession, period: Period, head: ChainHead, retention_days: int, as_of: datetime
) -> dict[str, JSONValue]:
    """The retention audit of `period` as of `as_of`, from entries with seq <= head.seq."""
    limit = timedelta(days=retention_days)
    limit_s = int(limit.total_seconds())
    # Recordings that started in the period, or whose deadline falls in it.
    starts = await load_entries(session, actions=[AuditAction.RECORDING_STARTED], upto_seq=head.seq,
                                since=period.start - limit - CLOCK_MARGIN, until=period.end + CLOCK_MARGIN)
    started: dict[str, ReportEntry] = {}
    for e in starts:
        if e.request_id and e.request_id not in started:
            started[e.request_id] = e
    purges_in_period = await load_entries(session, actions=[AuditAction.RECORDING_PURGED], upto_seq=head.seq,
                                          since=period.start, until=period.end)
    purges_of_started = await load_entries(session, actions=[AuditAction.RECORDING_PURGED], upto_seq=head.seq,
                                           request_ids=list(started))
    purged_at: dict[str, ReportEntry] = {}
    for e in [*purges_of_started, *purges_in_period]:
        if e.request_id and (e.request_id not in purged_at or e.seq < purged_at[e.request_id].seq):
            purged_at[e.request_id] = e
    keys = await load_entries(session, actions=[AuditAction.KEY_DESTROYED], upto_seq=head.seq,
                              since=period.start - limit - CLOCK_MARGIN)
    kek_destroyed: dict[tuple[str, str], ReportEntry] = {}
    for e in keys:
        bucket, region = e.text("bucket"), e.text("region")
        if e.text("key_kind") == "kek" and bucket and region:
            kek_destroyed.setdefault((region, bucket), e)

    days: dict[tuple[str, date], DayRow] = defaultdict(DayRow)
    regions: set[str] = set()
    in_period = set(period.days())

    def row(region: str, moment: datetime) -> DayRow | None:
        regions.add(region)
        day = moment.astimezone(UTC).date()
        return days[(region, day)] if day in in_period else None

    overdue: list[dict[str, JSONValue]] = []
    over_age: list[dict[str, JSONValue]] = []
    buckets: dict[tuple[str, str], datetime] = {}
    for request_id, e in started.items():
        region, start = e.text("region") or "?", e.time("started_at") or e.at
        bucket = e.text("kek_bucket")
        if bucket and _bucket_start(bucket) is not None:
            buckets.setdefault((region, bucket), _bucket_start(bucket) or start)
        if (r := row(region, start)) is not None:
            r.recordings_started += 1
        deadline = start + limit
        purge = purged_at.get(request_id)
        late = (purge is None and deadline < as_of) or (purge is not None and purge.at > deadline)
        if late and (r := row(region, deadline)) is not None:
            r.overdue_recordings += 1
            r.overdue_request_ids.append(request_id)
            overdue.append({"request_id": request_id, "region": region, "started_at": _t(start),
                            "deadline": _t(deadline), "purged_at": _t(purge.at) if purge else None})
    for e in purges_in_period:
        region = e.text("region") or (started[e.request_id].text("region") if e.request_id in started else None)
        r = row(region or "?", e.at)
        if r is None:
            continue
        r.recordings_purged += 1
        reason = e.text("reason")
        r.purged_for_retention += reason == "retention"
        r.purged_for_erasure += reason == "erasure"
        age = e.number("age_s")
        if age is not None:
            r.add_age(age)
            if age > limit_s:
                r.purged_over_age += 1
                over_age.append({"request_id": e.request_id, "region": region, "age_s": age, "seq": e.seq})
    for e in keys:
        if period.start <= e.at < period.end and (r := row(e.text("region") or "?", e.at)) is not None:
            if e.text("key_kind") == "kek":
                r.kek_buckets_destroyed += 1
            else:
                r.deks_destroyed += 1
    overdue_buckets: list[dict[str, JSONValue]] = []
    for (region, bucket), bucket_start in sorted(buckets.items()):
        deadline = bucket_start + limit  # a bucket is purged when it is `retention_days` old (DESIGN.md)
        destroyed = kek_destroyed.get((region, bucket))
        late = (destroyed is None and deadline < as_of) or (destroyed is not None and destroyed.at > deadline)
        if late and (r := row(region, deadline)) is not None:
            r.overdue_kek_buckets += 1
            overdue_buckets.append({"region": region, "bucket": bucket, "deadline": _t(deadline),
                                    "destroyed_at": _t(destroyed.at) if destroyed else None})

    table = [(region, day, days.get((region, day), DayRow())) for region in sorted(regions) for day in period.days()]
    rows: list[dict[str, JSONValue]] = [{
        "region": region, "day": day.isoformat(),
        "recordings_started": d.recordings_started, "recordings_purged": d.recordings_purged,
        "purged_for_retention": d.purged_for_retention, "purged_for_erasure": d.purged_for_erasure,
        "max_age_at_purge_s": d.max_age_at_purge_s, "min_age_at_purge_s": d.min_age_at_purge_s,
        "purged_over_age": d.purged_over_age, "kek_buckets_destroyed": d.kek_buckets_destroyed,
        "deks_destroyed": d.deks_destroyed, "overdue_recordings": d.overdue_recordings,
        "overdue_kek_buckets": d.overdue_kek_buckets,
        "within_limit": d.purged_over_age == 0 and d.overdue_recordings == 0 and d.overdue_kek_buckets == 0,
    } for region, day, d in table]
    ages = [d.max_age_at_purge_s for _, _, d in table if d.max_age_at_purge_s is not None]
    return {
        "kind": "retention",
        "period": period.to_json(),
        "head": {"seq": head.seq, "hash": head.entry_hash},
        "as_of": canonical_time(as_of),
        "retention_days": retention_days,
        "limit_s": limit_s,
        "days": rows,
        "overdue_recordings": overdue,
        "overdue_kek_buckets": overdue_buckets,
        "purged_over_age": over_age,
        "totals": {
            "recordings_started": sum(d.recordings_started for _, _, d in table),
            "recordings_purged": sum(d.recordings_purged for _, _, d in table),
            "kek_buckets_destroyed": sum(d.kek_buckets_destroyed for _, _, d in table),
            "deks_destroyed": sum(d.deks_destroyed for _, _, d in table),
            "max_age_at_purge_s": max(ages) if ages else None,
            "overdue_recordings": len(overdue),
            "overdue_kek_buckets": len(overdue_buckets),
            "purged_over_age": len(over_age),
            "within_limit": not overdue and not overdue_buckets and not over_age,
        },
    }


RETENTION_CSV_HEADER: Final = (
    "region", "day", "recordings_started", "recordings_purged", "purged_for_retention", "purged_for_erasure",
    "max_age_at_purge_s", "min_age_at_purge_s", "purged_over_age", "kek_buckets_destroyed", "deks_destroyed",
    "overdue_recordings", "overdue_kek_buckets", "within_limit",
)


def retention_rows(report: dict[str, JSONValue]) -> list[list[JSONValue]]:
    days = report["days"]
    assert isinstance(days, list)  # noqa: S101 - built by build_retention_audit
    return [[d[column] for column in RETENTION_CSV_HEADER] for d in days if isinstance(d, dict)]
