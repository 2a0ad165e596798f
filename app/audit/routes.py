"""HTTP face of the audit trail: public keys for anyone, verification and reports for auditors (C6)."""

from __future__ import annotations

import base64
import json
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import AwareDatetime

from app.audit.actions import Actor, AuditAction, InvalidAuditEntry
from app.audit.auditors import Auditor, AuditorDep
from app.audit.checkpoints import list_checkpoints
from app.audit.entries import DEFAULT_PAGE, MAX_PAGE, ActorMatch, EntryFilter, list_entries
from app.audit.jobs import publish
from app.audit.reports.entries import Period
from app.audit.reports.service import (
    ReportFormat,
    ReportKind,
    SignedReportOutput,
    generate_report,
    verify_report,
)
from app.audit.reports.signing import report_content
from app.audit.runtime import AuditRuntime, AuditRuntimeDep
from app.audit.schemas import (
    AuditEntriesOut,
    CheckpointOut,
    PublicKeysOut,
    ReportVerificationOut,
    SignedReportIn,
    VerificationOut,
)
from app.audit.verifier import verify_chain
from app.deps import ClockDep, SessionDep
from app.errors import InvalidInput

router = APIRouter(prefix="/audit", tags=["audit"])

RuntimeDep = AuditRuntimeDep
FIRST_REPORT_DAY, LAST_REPORT_DAY = date(2000, 1, 1), date(9999, 1, 1)  # room for retention's 30-day look-back
FromDate = Annotated[date, Query(alias="from", ge=FIRST_REPORT_DAY, le=LAST_REPORT_DAY,
                                 description="First day (UTC), YYYY-MM-DD, included (2000-01-01 or later).")]
ToDate = Annotated[date, Query(alias="to", ge=FIRST_REPORT_DAY, le=LAST_REPORT_DAY,
                               description="Last day (UTC), YYYY-MM-DD, included (at most 367 days after `from`).")]
FormatQuery = Annotated[ReportFormat, Query(alias="format", description="`json` (signed document) or `csv`.")]
MAX_SEQ = 2**63 - 1  # sequence and checkpoint numbers are 64-bit signed integers in the database


@router.get("/keys", summary="Public keys that sign checkpoints and reports")
async def public_keys(runtime: RuntimeDep) -> PublicKeysOut:
    """Every signing key with its validity window. Public: verifiers outside voicelog need them."""
    return PublicKeysOut.model_validate(runtime.keyring.public_keys().to_json())


@router.get("/verify", summary="Verify the audit chain and its checkpoints")
async def verify(
    _auditor: AuditorDep, runtime: RuntimeDep, session: SessionDep, clock: ClockDep,
    from_seq: Annotated[int, Query(ge=1, le=MAX_SEQ,
                                   description="First entry to check (its predecessor is trusted).")] = 1,
) -> VerificationOut:
    result = await verify_chain(
        session=session, keys=runtime.keyring.public_keys(), exported=await runtime.sink.read_all(),
        from_seq=from_seq, now=clock.now(), pending_alarm_s=runtime.settings.pending_alarm_s,
        mac_keys=runtime.mac_keys, mac_from_seq=runtime.settings.entry_mac_from_seq,
    )
    if runtime.metrics is not None and from_seq == 1:
        publish(runtime.metrics, result)
    return VerificationOut.model_validate(result.to_json())


@router.get("/checkpoints", summary="Signed checkpoints, oldest first")
async def checkpoints(
    _auditor: AuditorDep, session: SessionDep,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="Only checkpoints numbered above this.")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[CheckpointOut]:
    found = await list_checkpoints(session, after=after, limit=limit)
    return [CheckpointOut.model_validate(c.to_json()) for c in found]


@router.get("/entries", summary="Audit entries by chain position, filtered (auditors)")
async def entries(
    _auditor: AuditorDep, session: SessionDep,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="Only entries with a seq above this (paging forward: "
                                "the previous page's `next_after`).")] = 0,
    before: Annotated[int | None, Query(ge=1, le=MAX_SEQ, description="Only entries with a seq below this, the "
                                        "newest of them (paging back: `prev_before`). Omit both for the oldest.")
                      ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="At most this many entries.")] = DEFAULT_PAGE,
    action: Annotated[list[AuditAction] | None, Query(
        description="Only these actions (repeat the parameter for several), e.g. `access.approved`.")] = None,
    actor: Annotated[str | None, Query(
        max_length=160, description="Only this actor: `TYPE:ID` (e.g. `staff:alice`) or a bare id of any type.")
                     ] = None,
    since: Annotated[AwareDatetime | None, Query(
        description="Only entries recorded at or after this time (ISO 8601 with a zone).")] = None,
    until: Annotated[AwareDatetime | None, Query(
        description="Only entries recorded before this time (ISO 8601 with a zone).")] = None,
) -> AuditEntriesOut:
    """Each entry with its chain position and whether a signed checkpoint covers it yet. A view of the rows:
    `GET /audit/verify` proves them. Bad filters are 422 (`invalid_input`, or `invalid_audit_filter` when
    `until` is not after `since`). Listing is not audited (a follower would write on every poll)."""
    where = EntryFilter(actions=frozenset(action or ()), actor=None if actor is None else ActorMatch.parse(actor),
                        since=since, until=until)
    page = await list_entries(session, where=where, after=after, before=before, limit=limit)
    return AuditEntriesOut.model_validate(page.to_json())


async def _report(
    kind: ReportKind, auditor: Auditor, runtime: AuditRuntime, session: SessionDep, clock: ClockDep,
    first: date, last: date, fmt: ReportFormat,
) -> Response:
    output = await generate_report(
        session=session, clock=clock, keyring=runtime.keyring, kind=kind, fmt=fmt, period=Period(first, last),
        params=runtime.review_params, retention_days=runtime.settings.retention_days,
        requested_by=Actor.staff(auditor.subject),
    )
    return signed_report_response(output, f"{kind.value}_{first.isoformat()}_{last.isoformat()}")


def signed_report_response(output: SignedReportOutput, name: str) -> Response:
    """JSON: the signed document. CSV: the signed bytes as `<name>.csv`, envelope and signature in headers."""
    if output.fmt is ReportFormat.JSON:
        return Response(output.body(), media_type=output.media_type)
    sidecar = output.signed.sidecar()
    envelope = base64.urlsafe_b64encode(json.dumps(sidecar["envelope"], sort_keys=True).encode()).decode()
    return Response(output.body(), media_type=output.media_type, headers={
        "content-disposition": f'attachment; filename="{name}.csv"',
        "x-audit-report-envelope": envelope,
        "x-audit-report-key-id": output.signed.key_id,
        "x-audit-report-signature": str(output.signed.signature_json()["value"]),
    })


@router.get("/reports/access-review", summary="Access review for a period (signed)")
async def access_review(
    auditor: AuditorDep, runtime: RuntimeDep, session: SessionDep, clock: ClockDep,
    first: FromDate, last: ToDate, fmt: FormatQuery = ReportFormat.JSON,
) -> Response:
    """Every grant with requester, approver, ticket, request IDs, durations, reads and anomalies."""
    return await _report(ReportKind.ACCESS_REVIEW, auditor, runtime, session, clock, first, last, fmt)


@router.get("/reports/retention", summary="Retention audit for a period, per region and day (signed)")
async def retention(
    auditor: AuditorDep, runtime: RuntimeDep, session: SessionDep, clock: ClockDep,
    first: FromDate, last: ToDate, fmt: FormatQuery = ReportFormat.JSON,
) -> Response:
    """Recordings started and purged, ages at purge, KEK buckets destroyed and anything overdue (C7)."""
    return await _report(ReportKind.RETENTION, auditor, runtime, session, clock, first, last, fmt)


@router.post("/reports/verify", summary="Re-verify a signed JSON report")
async def verify_signed_report(
    body: SignedReportIn, _auditor: AuditorDep, runtime: RuntimeDep, session: SessionDep, clock: ClockDep,
) -> ReportVerificationOut:
    """Checks the signature, that the report's chain head is in an intact chain, and recomputes it."""
    try:
        content = report_content(body.report)
    except InvalidAuditEntry:  # a float: no report voicelog signed holds one
        raise InvalidInput("The report is not one voicelog signed: it holds a number with a fraction.") from None
    result = await verify_report(
        session=session, envelope=body.envelope, signature=body.signature,
        content=content, keys=runtime.keyring.public_keys(),
        exported=await runtime.sink.read_all(), params=runtime.review_params,
        retention_days=runtime.settings.retention_days, now=clock.now(),
    )
    return ReportVerificationOut.model_validate(result.to_json())
