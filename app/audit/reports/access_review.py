"""Access review for a period (C5, C6): every grant, its reads, and the anomalies an auditor looks for.

A grant is in the review when any of its events (request, decision, end, read, denied read) falls in the
period; its whole history up to the period's end is used. Computed from audit entries only.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.actions import AuditAction, JSONValue
from app.audit.canonical import canonical_time
from app.audit.reports.entries import Period, ReportEntry, load_entries
from app.audit.service import ChainHead
from app.audit.settings import AuditSettings

GRANT_ACTIONS: Final = (
    AuditAction.ACCESS_REQUESTED, AuditAction.ACCESS_APPROVED, AuditAction.ACCESS_DENIED,
    AuditAction.ACCESS_EXPIRED, AuditAction.ACCESS_REVOKED, AuditAction.RECORDING_READ,
    AuditAction.RECORDING_READ_DENIED,
)
NOT_IN_GRANT_REASONS: Final = frozenset({"request_not_in_grant"})


class Anomaly(StrEnum):
    FAST_APPROVAL = "fast_approval"  # approved within `fast_approval_s` of the request
    GRANT_UNUSED = "grant_unused"  # approved, ended within the period and before the report, never read
    READ_OUTSIDE_GRANT = "read_outside_grant"  # a read (or attempt) of a request ID the grant does not name
    READ_OUTSIDE_WINDOW = "read_outside_window"  # a read before approval or after expiry/revocation
    SELF_APPROVAL = "self_approval"  # requester approved their own request (C5 forbids it)
    DOMINANT_PAIR = "dominant_pair"  # one requester-approver pair holds most approvals
    OFF_HOURS_APPROVAL = "off_hours_approval"  # approved outside working days/hours
    REPEATED_DENIALS = "repeated_denials"  # one requester denied again and again (requests or reads)


@dataclass(frozen=True)
class AccessReviewParams:
    fast_approval_s: int = 60
    working_hours_start: int = 8
    working_hours_end: int = 18
    working_days: tuple[int, ...] = (0, 1, 2, 3, 4)
    working_timezone: str = "UTC"
    dominant_pair_percent: int = 50
    dominant_pair_min_approvals: int = 5
    repeated_denials: int = 3

    @classmethod
    def from_settings(cls, settings: AuditSettings) -> AccessReviewParams:
        return cls(
            fast_approval_s=settings.fast_approval_s, working_hours_start=settings.working_hours_start,
            working_hours_end=settings.working_hours_end, working_days=tuple(settings.working_days),
            working_timezone=settings.working_timezone, dominant_pair_percent=settings.dominant_pair_percent,
            dominant_pair_min_approvals=settings.dominant_pair_min_approvals,
            repeated_denials=settings.repeated_denials,
        )

    def to_json(self) -> dict[str, JSONValue]:
        return {
            "fast_approval_s": self.fast_approval_s, "working_hours_start": self.working_hours_start,
            "working_hours_end": self.working_hours_end, "working_days": list(self.working_days),
            "working_timezone": self.working_timezone, "dominant_pair_percent": self.dominant_pair_percent,
            "dominant_pair_min_approvals": self.dominant_pair_min_approvals,
            "repeated_denials": self.repeated_denials,
        }

    def off_hours(self, moment: datetime) -> bool:
        local = moment.astimezone(ZoneInfo(self.working_timezone))
        return local.weekday() not in self.working_days or not (
            self.working_hours_start <= local.hour < self.working_hours_end
        )


@dataclass
class GrantHistory:
    grant: str
    requested: ReportEntry | None = None
    decision: ReportEntry | None = None
    ended: ReportEntry | None = None
    refused: ReportEntry | None = None  # a denial after the approval: the customer's refusal (Lockbox)
    reads: list[ReportEntry] = field(default_factory=list)
    denied_reads: list[ReportEntry] = field(default_factory=list)
    anomalies: set[Anomaly] = field(default_factory=set)

    @property
    def requester(self) -> str | None:
        if self.requested is not None:
            return self.requested.actor_id
        return self.decision.text("requester") if self.decision is not None else None

    @property
    def approved(self) -> bool:
        return self.decision is not None and self.decision.action == AuditAction.ACCESS_APPROVED

    @property
    def request_ids(self) -> list[str]:
        ids = self.requested.detail.get("request_ids") if self.requested else None
        return [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []

    @property
    def expires_at(self) -> datetime | None:
        return self.decision.time("expires_at") if self.approved and self.decision else None

    def end_of_use(self) -> datetime | None:
        """When the grant stops allowing reads: its expiry time, or a revocation, expiry or refusal entry,
        whichever comes first. It may lie after the report was made: the grant is then still live."""
        ends = (self.expires_at, self.ended.at if self.ended else None, self.refused.at if self.refused else None)
        candidates = [t for t in ends if t is not None]
        return min(candidates) if candidates else None


def _t(moment: datetime | None) -> str | None:
    return None if moment is None else canonical_time(moment)


def _collect(entries: list[ReportEntry]) -> tuple[dict[str, GrantHistory], list[ReportEntry]]:
    grants: dict[str, GrantHistory] = {}
    loose_denials: list[ReportEntry] = []
    for e in entries:
        if e.grant is None:
            if e.action == AuditAction.RECORDING_READ_DENIED:
                loose_denials.append(e)
            continue
        history = grants.setdefault(e.grant, GrantHistory(e.grant))
        if e.action == AuditAction.ACCESS_REQUESTED:
            history.requested = history.requested or e
        elif e.action in (AuditAction.ACCESS_APPROVED, AuditAction.ACCESS_DENIED):
            if history.decision is None:
                history.decision = e
            elif history.approved and e.action == AuditAction.ACCESS_DENIED:
                history.refused = history.refused or e
        elif e.action in (AuditAction.ACCESS_EXPIRED, AuditAction.ACCESS_REVOKED):
            history.ended = history.ended or e
        elif e.action == AuditAction.RECORDING_READ:
            history.reads.append(e)
        elif e.action == AuditAction.RECORDING_READ_DENIED:
            history.denied_reads.append(e)
    return grants, loose_denials


def _flag(
    grants: dict[str, GrantHistory], loose_denials: list[ReportEntry], period: Period, params: AccessReviewParams,
    as_of: datetime,
) -> list[dict[str, JSONValue]]:
    """Set each grant's anomalies as of `as_of` (when the report is made); return every anomaly with its
    evidence (audit seqs)."""
    found: list[dict[str, JSONValue]] = []

    def note(code: Anomaly, history: GrantHistory | None, seqs: list[int], detail: str,
             requester: str | None = None, approver: str | None = None) -> None:
        if history is not None:
            history.anomalies.add(code)
        found.append({"code": code.value, "grant": history.grant if history else None,
                      "requester": requester or (history.requester if history else None),
                      "approver": approver or (history.decision.actor_id if history and history.decision else None),
                      "seqs": seqs, "detail": detail})

    approvals: Counter[tuple[str, str]] = Counter()
    approval_grants: dict[tuple[str, str], list[GrantHistory]] = defaultdict(list)
    denials: dict[str, list[int]] = defaultdict(list)
    for h in grants.values():
        d = h.decision
        if h.approved and d is not None:
            approver, requester = d.actor_id, h.requester or "?"
            if period.start <= d.at < period.end:
                approvals[(requester, approver)] += 1
                approval_grants[(requester, approver)].append(h)
            if h.requested is not None and d.at - h.requested.at <= timedelta(seconds=params.fast_approval_s):
                note(Anomaly.FAST_APPROVAL, h, [h.requested.seq, d.seq],
                     f"approved {int((d.at - h.requested.at).total_seconds())} s after the request")
            if approver == requester:
                note(Anomaly.SELF_APPROVAL, h, [d.seq], "the requester approved the request")
            if params.off_hours(d.at):
                note(Anomaly.OFF_HOURS_APPROVAL, h, [d.seq], f"approved at {_t(d.at)}")
            end = h.end_of_use()
            # Only a grant that has ended can have ended unused: one still live at `as_of` may yet be read.
            if not h.reads and end is not None and end < period.end and end <= as_of:
                note(Anomaly.GRANT_UNUSED, h, [d.seq], "the grant ended without a read")
        elif d is not None and d.action == AuditAction.ACCESS_DENIED and h.requester:
            denials[h.requester].append(d.seq)
        allowed = set(h.request_ids)
        end = h.end_of_use()
        for r in h.reads:
            if r.request_id not in allowed:
                note(Anomaly.READ_OUTSIDE_GRANT, h, [r.seq], f"read {r.request_id}, which the grant does not name")
            if not h.approved or d is None or r.at < d.at or (end is not None and r.at >= end):
                note(Anomaly.READ_OUTSIDE_WINDOW, h, [r.seq], f"read at {_t(r.at)} outside the grant's window")
        for r in h.denied_reads:
            denials[r.actor_id].append(r.seq)
            if r.request_id not in allowed or r.text("reason") in NOT_IN_GRANT_REASONS:
                note(Anomaly.READ_OUTSIDE_GRANT, h, [r.seq],
                     f"attempted to read {r.request_id}, which the grant does not name", requester=r.actor_id)
    for r in loose_denials:
        denials[r.actor_id].append(r.seq)
        if r.text("reason") in NOT_IN_GRANT_REASONS:
            note(Anomaly.READ_OUTSIDE_GRANT, None, [r.seq], f"attempted to read {r.request_id} outside any grant",
                 requester=r.actor_id)
    total = sum(approvals.values())
    for (requester, approver), count in sorted(approvals.items()):
        if count >= params.dominant_pair_min_approvals and count * 100 >= params.dominant_pair_percent * total:
            pair = approval_grants[(requester, approver)]
            for h in pair:
                h.anomalies.add(Anomaly.DOMINANT_PAIR)
            note(Anomaly.DOMINANT_PAIR, None, sorted(h.decision.seq for h in pair if h.decision),
                 f"{count} of {total} approvals in the period", requester=requester, approver=approver)
    for requester, seqs in sorted(denials.items()):
        if len(seqs) >= params.repeated_denials:
            for h in grants.values():
                if h.requester == requester and (h.denied_reads or not h.approved):
                    h.anomalies.add(Anomaly.REPEATED_DENIALS)
            note(Anomaly.REPEATED_DENIALS, None, sorted(seqs), f"{len(seqs)} denials", requester=requester)
    return found


def _read_json(e: ReportEntry) -> dict[str, JSONValue]:
    return {"seq": e.seq, "at": _t(e.at), "request_id": e.request_id, "part": e.text("part"),
            "bytes": e.number("bytes") or 0, "saw": e.saw, "device": e.text("device")}


def _denied_json(e: ReportEntry) -> dict[str, JSONValue]:
    return {"seq": e.seq, "at": _t(e.at), "by": e.actor_id, "request_id": e.request_id, "grant": e.grant,
            "saw": e.saw, "reason": e.text("reason")}


def _grant_json(h: GrantHistory) -> dict[str, JSONValue]:
    d, req = h.decision, h.requested
    state = "pending" if d is None else ("approved" if h.approved else "denied")
    granted_s = None
    if h.approved and d is not None:
        granted_s = d.number("duration_s")
        if granted_s is None and h.expires_at is not None:
            granted_s = max(0, int((h.expires_at - d.at).total_seconds()))
    used_s = int((max(r.at for r in h.reads) - d.at).total_seconds()) if h.reads and d is not None else 0
    return {
        "grant": h.grant,
        "ticket": req.ticket if req else (d.ticket if d else None),
        "requester": h.requester,
        "approver": d.actor_id if d is not None and h.approved else None,
        "decided_by": d.actor_id if d is not None else None,
        "decision": state,
        "request_ids": list(h.request_ids),
        "justification": req.text("justification") if req else None,
        "requested_at": _t(req.at) if req else None,
        "decided_at": _t(d.at) if d else None,
        "expires_at": _t(h.expires_at),
        "ended": None if h.ended is None else h.ended.action.removeprefix("access."),
        "ended_at": _t(h.ended.at) if h.ended else None,
        "requested_duration_s": req.number("duration_s") if req else None,
        "granted_duration_s": granted_s,
        "used_duration_s": max(0, used_s),
        "reads": [_read_json(r) for r in h.reads],
        "read_count": len(h.reads),
        "bytes_read": sum(r.number("bytes") or 0 for r in h.reads),
        "devices": sorted({r.saw for r in h.reads if r.saw}),
        "request_ids_read": sorted({r.request_id for r in h.reads if r.request_id}),
        "denied_reads": [_denied_json(r) for r in h.denied_reads],
        "anomalies": sorted(a.value for a in h.anomalies),
    }


async def build_access_review(
    *, session: AsyncSession, period: Period, head: ChainHead, params: AccessReviewParams, as_of: datetime
) -> dict[str, JSONValue]:
    """The access review of `period` as of `as_of` (the report's generated_at, so it recomputes the same),
    from entries with seq <= head.seq."""
    in_period = await load_entries(session, actions=GRANT_ACTIONS, upto_seq=head.seq,
                                   since=period.start, until=period.end)
    grant_ids = {e.grant for e in in_period if e.grant is not None}
    history = await load_entries(session, actions=GRANT_ACTIONS, upto_seq=head.seq, until=period.end,
                                 grants=grant_ids)
    loose = [e for e in in_period if e.grant is None]
    grants, loose_denials = _collect(sorted([*history, *loose], key=lambda e: e.seq))
    anomalies = _flag(grants, loose_denials, period, params, as_of)
    ordered = sorted(grants.values(), key=lambda h: (h.requested.seq if h.requested else 0, h.grant))
    rows = [_grant_json(h) for h in ordered]
    return {
        "kind": "access_review",
        "period": period.to_json(),
        "head": {"seq": head.seq, "hash": head.entry_hash},
        "parameters": params.to_json(),
        "grants": rows,
        "denied_reads_without_grant": [_denied_json(e) for e in loose_denials],
        "anomalies": anomalies,
        "totals": {
            "grants": len(rows),
            "approved": sum(1 for h in ordered if h.approved),
            "denied": sum(1 for r in rows if r["decision"] == "denied"),
            "pending": sum(1 for r in rows if r["decision"] == "pending"),
            "reads": sum(len(h.reads) for h in ordered),
            "bytes_read": sum(sum(r.number("bytes") or 0 for r in h.reads) for h in ordered),
            "denied_reads": sum(len(h.denied_reads) for h in ordered) + len(loose_denials),
            "anomalies": len(anomalies),
        },
    }


ACCESS_REVIEW_CSV_HEADER: Final = (
    "grant", "ticket", "requester", "approver", "decision", "requested_at", "decided_at", "expires_at", "ended",
    "ended_at", "requested_duration_s", "granted_duration_s", "used_duration_s", "request_ids",
    "request_ids_read", "read_count", "bytes_read", "devices", "denied_reads", "anomalies", "justification",
)


def access_review_rows(report: dict[str, JSONValue]) -> list[list[JSONValue]]:
    grants = report["grants"]
    assert isinstance(grants, list)  # noqa: S101 - built by build_access_review
    rows: list[list[JSONValue]] = []
    for g in grants:
        assert isinstance(g, dict)  # noqa: S101
        denied = g["denied_reads"]
        values = {**g, "denied_reads": len(denied) if isinstance(denied, list) else 0}
        rows.append([values[column] for column in ACCESS_REVIEW_CSV_HEADER])
    return rows
