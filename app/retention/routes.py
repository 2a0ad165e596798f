"""HTTP face of retention: the signed retention report, for auditors (C7).

    app.include_router(retention_router)   # from app.retention.routes import router as retention_router
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.audit.actions import Actor
from app.audit.auditors import AuditorDep
from app.audit.reports.entries import Period
from app.audit.reports.service import ReportFormat
from app.audit.routes import FormatQuery, FromDate, RuntimeDep, ToDate, signed_report_response
from app.deps import ClockDep, ContextDep, SessionDep
from app.retention.report import chain_queued_entries, generate_retention_report

router = APIRouter(prefix="/retention", tags=["retention"])


@router.get("/report", summary="Retention report for a period, per region and UTC day (signed)")
async def retention_report(
    auditor: AuditorDep, runtime: RuntimeDep, ctx: ContextDep, session: SessionDep, clock: ClockDep,
    first: FromDate, last: ToDate, fmt: FormatQuery = ReportFormat.JSON,
) -> Response:
    """Recordings started, purged and erased, max age at purge, overdue (should be 0), KEK buckets destroyed
    and blobs pending, signed with the audit key. CSV: the envelope and signature travel in headers."""
    period = Period(first, last)
    await chain_queued_entries(ctx.session_factory)
    output = await generate_retention_report(
        session=session, clock=clock, keyring=runtime.keyring, period=period, fmt=fmt,
        retention_days=runtime.settings.retention_days, requested_by=Actor.staff(auditor.subject),
    )
    return signed_report_response(output, f"retention_{first.isoformat()}_{last.isoformat()}")
