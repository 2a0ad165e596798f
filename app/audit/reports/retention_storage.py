"""The retention report's storage columns (C7): what `app.retention.report` adds to the retention audit, and
how a verifier re-checks them.

The report is the audit's retention audit at one chain head plus the recordings purged in the period whose
blob delete was still pending when it was made (`storage_as_of`). The audit columns recompute exactly from
the chain. Which blobs were pending is the database's state of that moment, gone once the deletes succeed:
it is checked against the chain as far as the chain knows it, and what cannot be recomputed is said.
"""

from __future__ import annotations

import copy
import csv
import io
import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.actions import AuditAction, JSONValue, parse_detail_time
from app.audit.canonical import canonical_time
from app.audit.reports.entries import Period, load_entries
from app.audit.reports.retention import RETENTION_CSV_HEADER, build_retention_audit
from app.audit.reports.signing import report_content, to_csv
from app.audit.service import ChainHead

REPORT_KIND: Final = "retention_storage"
CSV_HEADER: Final = (*RETENTION_CSV_HEADER, "blobs_pending")
PENDING_LISTED: Final = 1000
# A recording's row is marked purged and its `recording.purged` entry appended in one transaction, moments apart.
PURGE_ENTRY_MARGIN: Final = timedelta(hours=1)

UNVERIFIED_PENDING: Final = (
    "blobs_pending: whether each listed blob was still undeleted at storage_as_of, and whether a pending blob "
    "is missing from the list, is the database's state at that moment and cannot be recomputed; checked: "
    "each listed recording has its recording.purged entry in the trail (same region and reason, within an "
    "hour of purged_at), and each day's count and the total are the list's"
)
UNVERIFIED_PENDING_TRUNCATED: Final = (
    f"blobs_pending per day: the list holds the first {PENDING_LISTED} only, so the day counts are checked to "
    "sum to the total, not recounted"
)
UNVERIFIED_PENDING_CSV: Final = (
    "blobs_pending: which blobs were pending is the database's state at generated_at and cannot be "
    "recomputed (the JSON report lists them); checked: each day's figure is at most that day's "
    "recordings_purged"
)


@dataclass(frozen=True)
class PendingBlob:
    """A recording purged in the period whose blob delete had not succeeded yet."""

    request_id: str
    region: str
    purged_at: datetime
    reason: str | None

    @property
    def day_key(self) -> tuple[str, str]:
        return self.region, self.purged_at.date().isoformat()


def add_storage_columns(
    report: dict[str, JSONValue], *, per_day: Mapping[tuple[str, str], int], total: int,
    listed: Sequence[PendingBlob], as_of: datetime,
) -> dict[str, JSONValue]:
    """The retention audit `report` (changed in place) with blobs pending: per (region, day), in total, the
    first `PENDING_LISTED` by name, and the moment they were read."""
    rows = report["days"]
    assert isinstance(rows, list)  # noqa: S101 - built by build_retention_audit
    for row in rows:
        if isinstance(row, dict):
            row["blobs_pending"] = per_day.get((str(row["region"]), str(row["day"])), 0)
    totals = report["totals"]
    assert isinstance(totals, dict)  # noqa: S101 - built by build_retention_audit
    totals["blobs_pending"] = total
    report["blobs_pending"] = [
        {"request_id": p.request_id, "region": p.region, "purged_at": canonical_time(p.purged_at),
         "reason": p.reason} for p in listed[:PENDING_LISTED]
    ]
    report["storage_as_of"] = canonical_time(as_of)
    return report


def with_blobs_pending(report: dict[str, JSONValue], pending: Sequence[PendingBlob],
                       as_of: datetime) -> dict[str, JSONValue]:
    """What the report states when it is made: every pending blob counted, the first ones listed."""
    return add_storage_columns(report, per_day=Counter(p.day_key for p in pending), total=len(pending),
                               listed=pending, as_of=as_of)


def storage_content(report: dict[str, JSONValue], *, as_csv: bool) -> bytes:
    """The signed bytes: canonical JSON of the report, or one CSV row per region and day."""
    if not as_csv:
        return report_content(report)
    days = report["days"]
    assert isinstance(days, list)  # noqa: S101 - built by add_storage_columns
    return to_csv(CSV_HEADER, [[d.get(c) for c in CSV_HEADER] for d in days if isinstance(d, dict)])


@dataclass(frozen=True)
class StorageRecheck:
    """`match` is True when every figure that can be checked is what the report states."""

    match: bool
    unverified: tuple[str, ...]


async def recheck_storage_report(
    *, session: AsyncSession, as_csv: bool, content: bytes, period: Period, head: ChainHead, as_of: datetime,
    retention_days: int,
) -> StorageRecheck:
    """Recompute the audit columns at `head` as of `as_of` (the report's generated_at), check the storage
    columns as far as the chain allows, and compare the bytes."""
    audit = await build_retention_audit(session=session, period=period, head=head, retention_days=retention_days,
                                        as_of=as_of)
    if as_csv:
        return _recheck_csv(content, audit, as_of)
    return await _recheck_json(session, content, audit, period, head)


def _recheck_csv(content: bytes, audit: dict[str, JSONValue], as_of: datetime) -> StorageRecheck:
    claimed = list(csv.reader(io.StringIO(content.decode())))
    rows = audit["days"]
    assert isinstance(rows, list)  # noqa: S101 - built by build_retention_audit
    if len(claimed) != len(rows) + 1:
        return StorageRecheck(False, (UNVERIFIED_PENDING_CSV,))
    column = CSV_HEADER.index("blobs_pending")
    per_day: dict[tuple[str, str], int] = {}
    for row, line in zip(rows, claimed[1:], strict=True):
        assert isinstance(row, dict)  # noqa: S101
        purged = row["recordings_purged"]
        cell = line[column] if len(line) == len(CSV_HEADER) else ""
        pending = int(cell) if cell.isascii() and cell.isdigit() else -1
        if not isinstance(purged, int) or not 0 <= pending <= purged:
            return StorageRecheck(False, (UNVERIFIED_PENDING_CSV,))
        per_day[(str(row["region"]), str(row["day"]))] = pending
    rebuilt = storage_content(add_storage_columns(audit, per_day=per_day, total=sum(per_day.values()), listed=(),
                                                  as_of=as_of), as_csv=True)
    return StorageRecheck(rebuilt == content, (UNVERIFIED_PENDING_CSV,))


async def _recheck_json(session: AsyncSession, content: bytes, audit: dict[str, JSONValue], period: Period,
                        head: ChainHead) -> StorageRecheck:
    unverified = [UNVERIFIED_PENDING]
    try:
        claimed = json.loads(content)
        listed = [PendingBlob(str(p["request_id"]), str(p["region"]), parse_detail_time(str(p["purged_at"])),
                              None if p["reason"] is None else str(p["reason"])) for p in claimed["blobs_pending"]]
        as_of = parse_detail_time(str(claimed["storage_as_of"]))
        total = claimed["totals"]["blobs_pending"]
        claimed_days = {(str(d["region"]), str(d["day"])): d["blobs_pending"] for d in claimed["days"]}
    except (KeyError, TypeError, ValueError):
        return StorageRecheck(False, tuple(unverified))
    if not isinstance(total, int) or len(listed) > PENDING_LISTED or total < len(listed):
        return StorageRecheck(False, tuple(unverified))
    if total > len(listed):  # truncated: the list cannot recount the days
        if len(listed) < PENDING_LISTED or sum(n for n in claimed_days.values() if isinstance(n, int)) != total:
            return StorageRecheck(False, (*unverified, UNVERIFIED_PENDING_TRUNCATED))
        unverified.append(UNVERIFIED_PENDING_TRUNCATED)
        per_day: Mapping[tuple[str, str], int] = {k: n for k, n in claimed_days.items() if isinstance(n, int)}
    else:
        per_day = Counter(p.day_key for p in listed)
    backed = await _purged_in_trail(session, listed, period, head)
    rebuilt = add_storage_columns(copy.deepcopy(audit), per_day=per_day, total=total, listed=listed, as_of=as_of)
    return StorageRecheck(backed and report_content(rebuilt) == content, tuple(unverified))


async def _purged_in_trail(session: AsyncSession, listed: Sequence[PendingBlob], period: Period,
                           head: ChainHead) -> bool:
    """Every listed recording was purged in the period, as the trail at `head` says: same region and reason,
    at the time stated (within the margin; the row's time and the entry's are read moments apart)."""
    purges = await load_entries(session, actions=[AuditAction.RECORDING_PURGED], upto_seq=head.seq,
                                request_ids=[p.request_id for p in listed])
    by_id: dict[str, list[Any]] = defaultdict(list)
    for e in purges:
        if e.request_id is not None:
            by_id[e.request_id].append(e)
    for p in listed:
        if not period.start <= p.purged_at < period.end:
            return False
        if not any(e.text("region") == p.region and e.text("reason") == p.reason
                   and abs(e.at - p.purged_at) <= PURGE_ENTRY_MARGIN for e in by_id.get(p.request_id, [])):
            return False
    return True
