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
from app.audit.canonical import GENESIS_HASH
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
from app.audit.reports.retention_storage import REPORT_KIND as STORAGE_REPORT_KIND
from app.audit.reports.retention_storage import recheck_storage_report
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
        return await build_access_review(session=session, period=period, head=head, params=params, as_of=as_of)
    return await build_retention_audit(session=session, period=period, head=head,
                                       retention_days=retention_days, as_of=as_of)


def render(kind: ReportKind, fmt: ReportFormat, report: dict[str, JSONValue]) -> bytes:
    if fmt is ReportFormat.JSON:
        return report_content(report)
    if kind is ReportKind.ACCESS_REVIEW:
        return to_csv(ACCESS_REVIEW_CSV_HEADER, access_review_rows(report))
    return to_csv(RETENTION_CSV_HEADER, retention_rows(report))


async def record_report_generated(
    *, session: AsyncSession, clock: Clock, actor: Actor, report: str, period: Period, head: ChainHead,
) -> None:
    """C6: who made which report, of which period, at which chain head. Every front door (API, console, CLI)
    reaches this through `audited_report`, `generate_report` or the retention report, once per report."""
    await append_entry(
        session=session, clock=clock, actor=actor, action=AuditAction.REPORT_GENERATED,
        detail={"report": report, "period_from": period.first.isoformat(), "period_to": period.last.isoformat(),
                "head_seq": head.seq},
    )


@dataclass(frozen=True)
class ComputedReport:
    report: dict[str, JSONValue]
    head: ChainHead
    at: datetime


async def audited_report(
    *,
    session: AsyncSession,
    clock: Clock,
    kind: ReportKind,
    period: Period,
    params: AccessReviewParams,
    retention_days: int,
    requested_by: Actor | None,
) -> ComputedReport:
    """The use case behind every front door: compute the report at the current chain head and audit who asked
    (`report.generated`). `requested_by` None only for a caller that audits it otherwise."""
    now = clock.now()
    head = await read_chain_head(session)
    report = await compute_report(session=session, kind=kind, period=period, head=head, as_of=now,
                                  params=params, retention_days=retention_days)
    if requested_by is not None:
        await record_report_generated(session=session, clock=clock, actor=requested_by, report=kind.value,
                                      period=period, head=head)
    return ComputedReport(report, head, now)


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
    """`audited_report`, signed in the format asked for."""
    computed = await audited_report(session=session, clock=clock, kind=kind, period=period, params=params,
                                    retention_days=retention_days, requested_by=requested_by)
    now, head = computed.at, computed.head
    signed = sign_report(kind=kind.value, fmt=fmt.value, content=render(kind, fmt, computed.report),
                         period=period.to_json(), head=head, generated_at=now, key=keyring.signing_key(now))
    return ReportOutput(fmt=fmt, report=computed.report, signed=signed, kind=kind)


@dataclass(frozen=True)
class ReportVerification:
    ok: bool
    signature: str  # "ok" or why not
    chain: str  # "ok", or the damage kind, or "head_not_found"
    recomputed: str  # "match" (every figure that can be recomputed), "differs" or "skipped"
    head_seq: int | None
    unverified: tuple[str, ...] = ()  # figures that cannot be recomputed later, and what was checked of them

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "signature": self.signature, "chain": self.chain, "recomputed": self.recomputed,
                "head_seq": self.head_seq, "unverified": list(self.unverified)}


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

    JSON reports carry their parameters and are recomputed with them; CSV reports use `params`. The retention
    report (`retention_storage`) recomputes its audit columns; its blobs pending are checked against the chain
    and named in `unverified` for what no later check can recompute. `ok` needs every checkable figure to match.
    """
    sig = check_report_signature(envelope, signature, content, keys)
    if sig.head is None:
        return ReportVerification(False, sig.reason, "skipped", "skipped", None)
    head = sig.head
    chain = await verify_chain(session=session, keys=keys, exported=exported, now=now)
    stored = (await session.execute(select(ENTRIES.c.entry_hash).where(ENTRIES.c.seq == head.seq))).scalar()
    if chain.damage is not None and chain.damage.seq <= head.seq:
        chain_state = chain.damage.kind.value
    elif stored != head.entry_hash and (head.seq, head.entry_hash) != (0, GENESIS_HASH):  # 0: made on an empty chain
        chain_state = "head_not_found"
    else:
        chain_state = "ok"
    recomputed = "skipped"
    unverified: tuple[str, ...] = ()
    try:
        fmt = ReportFormat(str(envelope["format"]))
        period = Period(date.fromisoformat(envelope["period"]["from"]), date.fromisoformat(envelope["period"]["to"]))
        generated_at = parse_detail_time(str(envelope["generated_at"]))
        if fmt is ReportFormat.JSON:
            original = json.loads(content)
            params = _params_from(original.get("parameters"), params)
            retention_days = int(original.get("retention_days", retention_days))
        if envelope["kind"] == STORAGE_REPORT_KIND:
            storage = await recheck_storage_report(session=session, as_csv=fmt is ReportFormat.CSV, content=content,
                                                   period=period, head=head, as_of=generated_at,
                                                   retention_days=retention_days)
            recomputed, unverified = ("match" if storage.match else "differs"), storage.unverified
        else:
            kind = ReportKind(str(envelope["kind"]))
            report = await compute_report(session=session, kind=kind, period=period, head=head, as_of=generated_at,
                                          params=params, retention_days=retention_days)
            recomputed = "match" if render(kind, fmt, report) == content else "differs"
    except (KeyError, TypeError, ValueError):
        recomputed = "skipped"
    ok = sig.ok and chain_state == "ok" and recomputed == "match"
    return ReportVerification(ok, sig.reason, chain_state, recomputed, head.seq, unverified)


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
