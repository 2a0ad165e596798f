"""Authorizing one read of one recording (C4, C5) and auditing it (C6).

Every read does the same lookups whatever the outcome (staff, their present team's managers and their
present assignments, SAW, recording, grant, consent, ticket), then asks `decide_read`. A denial of any
kind gets one outward answer; its reason goes to the audit trail and the metrics only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Final, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from app.access.metrics import AccessMetrics
from app.access.policy import ConsentView, GrantView, RecordingView, SawView, StaffView, decide_read
from app.access.ratelimit import ReadLimiter
from app.access.service import StaffDirectory, grant_for_read
from app.audit.actions import Actor, AuditAction, Subjects
from app.audit.service import append_entry
from app.capture.service import RecordingRow, find_recording
from app.clock import Clock
from app.errors import NotFound
from app.identity.principal import Principal, Role
from app.request_id import RequestId, is_request_id
from app.tickets.service import consent_facts, ticket_view, tickets_assigned_to

NO_SUCH_ROW = "00000000-0000-0000-0000-000000000000"
LOOKUP_STAND_IN: Final = RequestId("0" * 32)
"""Looked up in place of a malformed request ID: the server never hands it out (IDs are 128 random bits)
and no row has it, so a malformed ID costs the same lookups as an unknown one (uniform timing, C4).
It is never audited: the denial names no request ID then."""


class RecordingNotAvailable(NotFound):
    """The one answer to every refused read: unknown ID, no grant, no SAW, expired... (C4)."""

    code = "recording_not_available"
    title = "No recording you may read has this request ID"
    keeps_transaction = True  # the refusal is audited even though the read fails


class SawLookup(Protocol):
    async def saw_for(self, session: AsyncSession, fingerprint: str | None, owner_subject: str) -> SawView | None:
        """The registered, unrevoked SAW of `fingerprint` (the certificate a trusted proxy verified, None when
        the caller presented none), bound to that person; else None."""
        ...


@dataclass(frozen=True)
class AllowedRead:
    recording: RecordingRow
    grant: GrantView
    saw: SawView


async def authorize_read(
    *,
    session: AsyncSession,
    clock: Clock,
    directory: StaffDirectory,
    saws: SawLookup,
    limiter: ReadLimiter,
    metrics: AccessMetrics,
    saw_fingerprint: str | None,
    actor: Principal,
    request_id: str,
    part: str,
    retention: timedelta,
) -> AllowedRead | None:
    """None means refused: the caller commits the audit entry written here, then raises RecordingNotAvailable.

    `request_id` is the string asked for (a path segment), checked here: one that is no request ID gets the
    same lookups and the same refusal as an unknown one (C4)."""
    now = clock.now()
    person = await directory.person(session, actor.subject)
    # The present, not the time of approval: today's team, its managers today, today's assignments (C5).
    team_managers = await directory.managers(session, person.team_id if person and person.team_id else NO_SUCH_ROW)
    assigned = await tickets_assigned_to(session=session, engineer=actor.subject)
    staff = StaffView(actor.subject, active=person.active,
                      is_engineer="engineer" in person.roles and actor.has(Role.ENGINEER),
                      team_id=person.team_id, team_managers=frozenset(team_managers),
                      assigned_tickets=assigned) if person else None
    saw = await saws.saw_for(session, saw_fingerprint, actor.subject)
    limiter.check_allowed(actor.subject, saw.id if saw else None)
    well_formed = request_id if is_request_id(request_id) else None
    lookup = well_formed or LOOKUP_STAND_IN
    recording = await find_recording(session=session, request_id=lookup)
    grant = await grant_for_read(session=session, requester=actor.subject, request_id=lookup, now=now)
    consent = await consent_facts(session=session, consent_id=recording.consent_id if recording else NO_SUCH_ROW)
    ticket = await ticket_view(session=session, ticket_id=grant.ticket_id if grant else NO_SUCH_ROW)
    decision = decide_read(
        now=now, actor=staff, saw=saw, grant=grant, request_id=well_formed, retention=retention,
        recording=RecordingView(recording.request_id, recording.ticket_id, recording.started_at,
                                shredded=recording.wrapped_dek is None) if recording else None,
        consent=ConsentView(consent.ticket_id, ended=consent.ended,
                            ticket_open=ticket is not None and ticket.is_open) if consent else None,
    )
    if decision.allowed and recording is not None and grant is not None and saw is not None:
        return AllowedRead(recording, grant, saw)
    reason = decision.reason.value if decision.reason else "unknown"
    metrics.denied.labels(reason).inc()
    if limiter.record_denial(actor.subject, saw.id if saw else None):
        metrics.denial_bursts.inc()
    await append_entry(session=session, clock=clock, actor=Actor.staff(actor.subject),
                       action=AuditAction.RECORDING_READ_DENIED,
                       subjects=Subjects(request_id=well_formed,
                                         saw=saw.id if saw else None, grant=grant.id if grant else None),
                       detail={"reason": reason, "part": part})
    return None


async def audit_read(
    *, session: AsyncSession, clock: Clock, actor: Principal, allowed: AllowedRead, part: str, nbytes: int,
    device: str, metrics: AccessMetrics,
) -> None:
    metrics.reads.labels(part).inc()
    metrics.read_bytes.labels(part).inc(nbytes)
    await append_entry(session=session, clock=clock, actor=Actor.staff(actor.subject),
                       action=AuditAction.RECORDING_READ,
                       subjects=Subjects(request_id=allowed.recording.request_id, grant=allowed.grant.id,
                                         saw=allowed.saw.id),
                       detail={"bytes": nbytes, "part": part, "device": device[:128]})
