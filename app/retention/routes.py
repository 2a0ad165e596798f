"""HTTP face of retention: the signed retention report, for auditors (C7).

    app.include_router(retention_router)   # from app.retention.routes import router as retention_router
"""

from __future__ import annotations

import base64
import json
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from app.audit.actions import Actor
from app.audit.reports.entries import Period
from app.audit.runtime import AuditRuntime, get_audit_runtime
from app.deps import ClockDep, ContextDep, SessionDep
from app.identity.principal import Principal, Role, require_role
from app.retention.report import ReportFormat, chain_queued_entries, generate_retention_report

router = APIRouter(prefix="/retention", tags=["retention"])

# One dependency object, so tests (and the app) can override exactly this check.
require_auditor = require_role(Role.AUDITOR)

AuditorDep = Annotated[Principal, Depends(require_auditor)]
RuntimeDep = Annotated[AuditRuntime, Depends(get_audit_runtime)]
FromDate = Annotated[date, Query(alias="from", description="First day (UTC), YYYY-MM-DD, included.")]
ToDate = Annotated[date, Query(alias="to", description="Last day (UTC), YYYY-MM-DD, included.")]
FormatQuery = Annotated[ReportFormat, Query(alias="format", description="`json` (signed document) or `csv`.")]


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
    if fmt is ReportFormat.JSON:
        return Response(output.body(), media_type=output.media_type)
    sidecar = output.signed.sidecar()
    envelope = base64.urlsafe_b64encode(json.dumps(sidecar["envelope"], sort_keys=True).encode()).decode()
    filename = f"retention_{first.isoformat()}_{last.isoformat()}.csv"
    return Response(output.body(), media_type=output.media_type, headers={
        "content-disposition": f'attachment; filename="{filename}"',
        "x-audit-report-envelope": envelope,
        "x-audit-report-key-id": output.signed.key_id,
        "x-audit-report-signature": str(output.signed.signature_json()["value"]),
    })
