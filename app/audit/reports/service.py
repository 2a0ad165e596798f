"""Producing and re-checking signed reports; used by the routes and the CLI alike."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.actions import Actor, AuditAction, JSONValue, parse_detail_time
from app.audit.checkpoints import Checkpoint
from app.audit.keys import Keyring, PublicKeySet
from app.audit.reports.access_review import (
    ACCESS_REVIEW_CSV_HEADER,
    AccessReviewParams,
    access_review_rows,
    build_access_review,
)
from app.audit.reports.entries import Period
from app.audit.reports.retention import RETENTION_CSV_HEADER, build_retention_audit, retention_rows
from app.audit.reports.signing import (
    SignedReport,
    check_report_signature,
    json_document,
    report_content,
    sign_report,
    to_csv,
)
from app.audit.service import ENTRIES, ChainHead, append_entry, read_chain_head
from app.audit.verifier import verify_chain
from app.clock import Clock


class ReportKind(StrEnum):
    ACCESS_REVIEW = "access_review"
    RETENTION = "retention"


class ReportFormat(StrEnum):
    JSON = "json"
    CSV = "csv"


@dataclass(frozen=True)
class SignedReportOutput:
    """A signed report in the format asked for; every signed report (audit, retention) is served as one."""

    fmt: ReportFormat
    report: dict[str, JSONValue]
    signed: SignedReport

    @property
    def media_type(self) -> str:
        return "application/json" if self.fmt is ReportFormat.JSON else "text/csv; charset=utf-8"

    def body(self) -> bytes:
        """JSON: the whole signed document. CSV: the signed CSV bytes (the sidecar travels separately)."""
        if self.fmt is ReportFormat.JSON:
            return (json.dumps(json_document(self.report, self.signed), indent=2, sort_keys=True) + "\n").encode()
        return self.signed.content


@dataclass(frozen=True)
class ReportOutput(SignedReportOutput):
    kind: ReportKind


async def compute_report(
    *,
    session: AsyncSession,
    kind: ReportKind,
    period: Period,
    head: ChainHead,
    as_of: datetime,
    params: AccessReviewParams,
    retention_days: int,
) -> dict[str, JSONValue]:
    if kind is ReportKind.ACCESS_REVIEW:
        return await build_access_review(session=session, period=period, head=head, params=params)
    return await build_retention_audit(session=session, period=period, head=head,
                                       retention_days=retention_days, as_of=as_of)


def render(kind: ReportKind, fmt: ReportFormat, report: dict[str, JSONValue]) -> bytes:
    if fmt is ReportFormat.JSON:
        return report_content(report)
    if kind is ReportKind.ACCESS_REVIEW:
        return to_csv(ACCESS_REVIEW_CSV_HEADER, access_review_rows(report))
    return to_csv(RETENTION_CSV_HEADER, retention_rows(report))


async def generate_report(
    *,
    session: AsyncSession,
    clock: Clock,
    keyring: Keyring,
    kind: ReportKind,
    fmt: ReportFormat,
    period: Period,
    params: AccessReviewParams,
    retention_days: int,
    requested_by: Actor | None = None,
) -> ReportOutput:
    """Compute the report at the current chain head, sign it, and (for a person) audit that it was made."""
    now = clock.now()
    head = await read_chain_head(session)
    report = await compute_report(session=session, kind=kind, period=period, head=head, as_of=now,
                                  params=params, retention_days=retention_days)
    signed = sign_report(kind=kind.value, fmt=fmt.value, content=render(kind, fmt, report),
                         period=period.to_json(), head=head, generated_at=now, key=keyring.signing_key(now))
    if requested_by is not None:
        await append_entry(
            session=session, clock=clock, actor=requested_by, action=AuditAction.REPORT_GENERATED,
            detail={"report": kind.value, "period_from": period.first.isoformat(),
                    "period_to": period.last.isoformat(), "head_seq": head.seq},
        )
    return ReportOutput(fmt=fmt, report=report, signed=signed, kind=kind)


@dataclass(frozen=True)
class ReportVerification:
    ok: bool
    signature: str  # "ok" or why not
    chain: str  # "ok", or the damage kind, or "head_not_found"
    recomputed: str  # "match", "differs" or "skipped"
    head_seq: int | None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "signature": self.signature, "chain": self.chain, "recomputed": self.recomputed,
                "head_seq": self.head_seq}


async def verify_report(
    *,
    session: AsyncSession,
    envelope: Mapping[str, Any],
    signature: Mapping[str, Any],
    content: bytes,
    keys: PublicKeySet,
    exported: Sequence[Checkpoint] = (),
    params: AccessReviewParams,
    retention_days: int,
    now: datetime,
) -> ReportVerification:
    """Re-check a report: its signature, that its head is in an intact chain, and that it recomputes the same.

    JSON reports carry their parameters and are recomputed with them; CSV reports use `params`.
    """
    sig = check_report_signature(envelope, signature, content, keys)
    if sig.head is None:
        return ReportVerification(False, sig.reason, "skipped", "skipped", None)
    head = sig.head
    chain = await verify_chain(session=session, keys=keys, exported=exported, now=now)
    stored = (await session.execute(select(ENTRIES.c.entry_hash).where(ENTRIES.c.seq == head.seq))).scalar()
    if chain.damage is not None and chain.damage.seq <= head.seq:
        chain_state = chain.damage.kind.value
    elif stored != head.entry_hash:
        chain_state = "head_not_found"
    else:
        chain_state = "ok"
    recomputed = "skipped"
    try:
        kind, fmt = ReportKind(str(envelope["kind"])), ReportFormat(str(envelope["format"]))
        period = Period(date.fromisoformat(envelope["period"]["from"]), date.fromisoformat(envelope["period"]["to"]))
        generated_at = parse_detail_time(str(envelope["generated_at"]))
        if fmt is ReportFormat.JSON:
            original = json.loads(content)
            params = _params_from(original.get("parameters"), params)
            retention_days = int(original.get("retention_days", retention_days))
        report = await compute_report(session=session, kind=kind, period=period, head=head, as_of=generated_at,
                                      params=params, retention_days=retention_days)
        recomputed = "match" if render(kind, fmt, report) == content else "differs"
    except (KeyError, TypeError, ValueError):
        recomputed = "skipped"
    ok = sig.ok and chain_state == "ok" and recomputed == "match"
    return ReportVerification(ok, sig.reason, chain_state, recomputed, head.seq)


def _params_from(data: Any, default: AccessReviewParams) -> AccessReviewParams:
    if not isinstance(data, dict):
        return default
    return AccessReviewParams(
        fast_approval_s=int(data["fast_approval_s"]), working_hours_start=int(data["working_hours_start"]),
        working_hours_end=int(data["working_hours_end"]),
        working_days=tuple(int(d) for d in data["working_days"]),
        working_timezone=str(data["working_timezone"]), dominant_pair_percent=int(data["dominant_pair_percent"]),
        dominant_pair_min_approvals=int(data["dominant_pair_min_approvals"]),
        repeated_denials=int(data["repeated_denials"]),
    )
