"""The retention report (C7): per region and UTC day, signed with the audit key.

It is the audit trail's retention audit (`app.audit.reports.retention`: recordings started, purged and why,
ages at purge, KEK buckets and DEKs destroyed, anything overdue), computed at one chain head exactly as
`voicelog audit report retention` computes it, extended with what only the database knows: recordings
whose key is gone but whose blob delete is still pending ("blobs pending", per region and the day they were
purged), as of the time it was made. The envelope's kind is `retention_storage`; its format and how the
audit's report verifier re-checks it live in `app.audit.reports.retention_storage`: the audit columns
recompute unchanged, the blobs pending are checked against the chain as far as it knows them.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.actions import Actor, JSONValue
from app.audit.canonical import canonical_json
from app.audit.keys import Keyring
from app.audit.reports.entries import Period, first_entry_day
from app.audit.reports.retention import build_retention_audit
from app.audit.reports.retention_storage import (
    CSV_HEADER,
    REPORT_KIND,
    PendingBlob,
    storage_content,
    with_blobs_pending,
)
from app.audit.reports.service import ReportFormat, SignedReportOutput, record_report_generated
from app.audit.reports.signing import sign_report
from app.audit.service import ChainHead, integrate_pending, read_chain_head
from app.capture.retention_service import blobs_pending_shredded_between
from app.clock import Clock
from app.retention.locks import is_postgresql
from app.retention.models import RetentionReport

AUDIT_REPORT_KIND: Final = "retention"  # the kind `report.generated` entries name
__all__ = ["CSV_HEADER", "REPORT_KIND"]  # the report's format, importable from here too


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


async def blobs_pending(session: AsyncSession, period: Period) -> list[PendingBlob]:
    """Recordings purged in the period whose blob is still there, oldest purge first."""
    found = await blobs_pending_shredded_between(session=session, start=period.start, end=period.end)
    return [PendingBlob(rid, region, at, reason) for rid, region, at, reason in found]


async def build_retention_report(
    *, session: AsyncSession, period: Period, head: ChainHead, retention_days: int, as_of: datetime,
) -> dict[str, JSONValue]:
    """The audit's retention audit of `period` at `head`, plus blobs pending as of `as_of`."""
    report = await build_retention_audit(session=session, period=period, head=head, retention_days=retention_days,
                                         as_of=as_of)
    return with_blobs_pending(report, await blobs_pending(session, period), as_of)


async def days_to_report(session: AsyncSession, *, first: date, last: date) -> list[date]:
    """The days of [first, last] that need their daily report: none stored yet, and the service existed (its
    audit trail had begun). A fresh install signs nothing for the days before its first start."""
    began = await first_entry_day(session)
    if began is None:
        return []
    first = max(first, began)
    done = set((await session.execute(
        select(RetentionReport.day).where(RetentionReport.day >= first, RetentionReport.day <= last)
    )).scalars())
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    return [day for day in days if day not in done]


def render(fmt: ReportFormat, report: dict[str, JSONValue]) -> bytes:
    return storage_content(report, as_csv=fmt is ReportFormat.CSV)


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
        await record_report_generated(session=session, clock=clock, actor=requested_by, report=AUDIT_REPORT_KIND,
                                      period=period, head=head)
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
