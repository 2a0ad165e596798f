"""The retention report (C7): per region and UTC day, signed with the audit key.

It is the audit trail's retention audit (`app.audit.reports.retention`: recordings started, purged and why,
ages at purge, KEK buckets and DEKs destroyed, anything overdue), computed at one chain head exactly as
`voicelog audit report retention` computes it, extended with what only the database knows: recordings
whose key is gone but whose blob delete is still pending ("blobs pending", per region and the day they were
purged), as of the time it was made. The envelope's kind is `retention_storage`, so the audit's report
verifier is not asked to recompute the storage columns; the audit columns recompute unchanged.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.actions import Actor, AuditAction, JSONValue
from app.audit.canonical import canonical_json, canonical_time
from app.audit.keys import Keyring
from app.audit.reports.entries import Period
from app.audit.reports.retention import RETENTION_CSV_HEADER, build_retention_audit
from app.audit.reports.service import ReportFormat, SignedReportOutput
from app.audit.reports.signing import report_content, sign_report, to_csv
from app.audit.service import ChainHead, append_entry, integrate_pending, read_chain_head
from app.capture.retention_service import blobs_pending_shredded_between
from app.clock import Clock
from app.retention.locks import is_postgresql
from app.retention.models import RetentionReport

REPORT_KIND: Final = "retention_storage"
AUDIT_REPORT_KIND: Final = "retention"  # the kind `report.generated` entries name
CSV_HEADER: Final = (*RETENTION_CSV_HEADER, "blobs_pending")
PENDING_LISTED: Final = 1000


async def chain_queued_entries(session_factory: async_sessionmaker[AsyncSession], *, limit: int = 20_000) -> int:
    """PostgreSQL: chain the audit entries still queued, so a report made next sees every committed entry.

    Short transactions of the audit's own sequencer step; SQLite chains at once and needs nothing.
    """
    chained = 0
    while chained < limit:
        async with session_factory() as session:
            if not is_postgresql(session):
                return 0
            count = await integrate_pending(session, limit=2000, wait=True)
            await session.commit()
        chained += count
        if count == 0:
            break
    return chained


async def blobs_pending(session: AsyncSession, period: Period) -> list[tuple[str, str, datetime, str | None]]:
    """(request_id, region, shredded_at, reason) of recordings purged in the period whose blob is still there."""
    return await blobs_pending_shredded_between(session=session, start=period.start, end=period.end)


async def build_retention_report(
    *, session: AsyncSession, period: Period, head: ChainHead, retention_days: int, as_of: datetime,
) -> dict[str, JSONValue]:
    """The audit's retention audit of `period` at `head`, plus blobs pending as of `as_of`."""
    report = await build_retention_audit(session=session, period=period, head=head, retention_days=retention_days,
                                         as_of=as_of)
    pending = await blobs_pending(session, period)
    per_day = Counter((region, shredded.date().isoformat()) for _, region, shredded, _ in pending)
    rows = report["days"]
    assert isinstance(rows, list)  # noqa: S101 - built by build_retention_audit
    for row in rows:
        if isinstance(row, dict):
            row["blobs_pending"] = per_day.get((str(row["region"]), str(row["day"])), 0)
    totals = report["totals"]
    assert isinstance(totals, dict)  # noqa: S101 - built by build_retention_audit
    totals["blobs_pending"] = len(pending)
    report["blobs_pending"] = [
        {"request_id": rid, "region": region, "purged_at": canonical_time(at), "reason": reason}
        for rid, region, at, reason in pending[:PENDING_LISTED]
    ]
    report["storage_as_of"] = canonical_time(as_of)
    return report


def render(fmt: ReportFormat, report: dict[str, JSONValue]) -> bytes:
    if fmt is ReportFormat.JSON:
        return report_content(report)
    days = report["days"]
    assert isinstance(days, list)  # noqa: S101 - built by build_retention_report
    return to_csv(CSV_HEADER, [[d.get(c) for c in CSV_HEADER] for d in days if isinstance(d, dict)])


async def generate_retention_report(
    *,
    session: AsyncSession,
    clock: Clock,
    keyring: Keyring,
    period: Period,
    fmt: ReportFormat,
    retention_days: int,
    requested_by: Actor | None = None,
) -> SignedReportOutput:
    """Compute at the current chain head, sign with the audit key; a person's request is audited."""
    now = clock.now()
    head = await read_chain_head(session)
    report = await build_retention_report(session=session, period=period, head=head,
                                          retention_days=retention_days, as_of=now)
    signed = sign_report(kind=REPORT_KIND, fmt=fmt.value, content=render(fmt, report), period=period.to_json(),
                         head=head, generated_at=now, key=keyring.signing_key(now))
    if requested_by is not None:
        await append_entry(
            session=session, clock=clock, actor=requested_by, action=AuditAction.REPORT_GENERATED,
            detail={"report": AUDIT_REPORT_KIND, "period_from": period.first.isoformat(),
                    "period_to": period.last.isoformat(), "head_seq": head.seq},
        )
    return SignedReportOutput(fmt, report, signed)


def within_limit(report: dict[str, JSONValue]) -> bool:
    totals = report.get("totals")
    return isinstance(totals, dict) and totals.get("within_limit") is True


def overdue_counts(report: dict[str, JSONValue]) -> tuple[int, int]:
    """(overdue recordings, overdue KEK buckets) of a report."""
    totals = report.get("totals")
    if not isinstance(totals, dict):
        return 0, 0
    recordings, buckets = totals.get("overdue_recordings"), totals.get("overdue_kek_buckets")
    return (recordings if isinstance(recordings, int) else 0, buckets if isinstance(buckets, int) else 0)


def stored_report(day: date, output: SignedReportOutput, generated_at: datetime) -> RetentionReport:
    """The row that keeps a day's signed report (JSON)."""
    head = output.signed.envelope["head"]
    seq = head.get("seq") if isinstance(head, dict) else None
    return RetentionReport(
        day=day, generated_at=generated_at, head_seq=seq if isinstance(seq, int) else 0,
        within_limit=within_limit(output.report), envelope=canonical_json(output.signed.envelope),
        signature=canonical_json(output.signed.signature_json()), content=output.signed.content.decode(),
    )
