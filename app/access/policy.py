"""The one function that decides whether a staff member may read a recording (C5).

It is pure: the caller gathers plain snapshots of everything involved (doing the same lookups whether or
not the recording exists, so timing does not tell), and `decide_read` checks every condition. The
reason is for the audit trail and metrics; callers never show it (C4: an unknown request ID and a
known one without a grant get the same answer).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from app.access.states import AccessRequestState
from app.request_id import RequestId
from app.retention.policy import recording_expired


class DenyReason(StrEnum):
    NOT_ENGINEER = "not_engineer"
    NO_SAW = "no_saw"
    NO_RECORDING = "no_recording"
    RECORDING_GONE = "recording_gone"
    RECORDING_EXPIRED = "recording_expired"
    NO_GRANT = "no_grant"
    GRANT_NOT_APPROVED = "grant_not_approved"
    GRANT_EXPIRED = "grant_expired"
    REQUESTER_NOT_ASSIGNED = "requester_not_assigned"
    GRANT_REVOKED = "grant_revoked"
    GRANT_OTHER_PERSON = "grant_other_person"
    GRANT_OTHER_RECORDING = "grant_other_recording"
    SELF_APPROVED = "self_approved"
    APPROVER_NOT_MANAGER = "approver_not_manager"
    APPROVER_NOT_PRESENT_MANAGER = "approver_not_present_manager"
    CUSTOMER_APPROVAL_MISSING = "customer_approval_missing"
    TICKET_MISMATCH = "ticket_mismatch"
    CONSENT_ENDED = "consent_ended"
    TICKET_CLOSED = "ticket_closed"


@dataclass(frozen=True)
class StaffView:
    """The reader as the staff directory and the ticketing records say they are now (C5: the present)."""

    subject: str
    active: bool
    is_engineer: bool
    team_id: str | None
    team_managers: frozenset[str] = frozenset()  # active managers of `team_id` now
    assigned_tickets: frozenset[str] = frozenset()  # tickets the person is assigned to now


@dataclass(frozen=True)
class SawView:
    id: str
    owner_subject: str
    revoked: bool


@dataclass(frozen=True)
class GrantView:
    id: str
    requester: str
    ticket_id: str
    request_ids: frozenset[RequestId]
    state: AccessRequestState  # approved is the only state that reads
    approved_by: str | None
    approver_was_manager: bool  # of the requester's team when approving; the present is checked too
    expires_at: datetime | None
    revoked: bool
    needs_customer_approval: bool
    customer_approved: bool


@dataclass(frozen=True)
class RecordingView:
    request_id: RequestId
    ticket_id: str
    started_at: datetime
    shredded: bool


@dataclass(frozen=True)
class ConsentView:
    ticket_id: str
    ended: bool  # withdrawn, erased, or ended by closing the ticket (a natural expiry is not an end)
    ticket_open: bool


@dataclass(frozen=True)
class ReadDecision:
    allowed: bool
    reason: DenyReason | None  # audited and counted, never shown to the caller

    @classmethod
    def allow(cls) -> ReadDecision:
        return cls(True, None)

    @classmethod
    def deny(cls, reason: DenyReason) -> ReadDecision:
        return cls(False, reason)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _among(value: str, present: frozenset[str]) -> bool:
    return any(_same(value, item) for item in present)


def decide_read(
    *,
    now: datetime,
    actor: StaffView | None,
    saw: SawView | None,
    grant: GrantView | None,
    recording: RecordingView | None,
    consent: ConsentView | None,
    request_id: RequestId | None,
    retention: timedelta,
) -> ReadDecision:
    """C5: every condition must hold; the first that fails is the reason. `request_id` is the one asked for,
    None when what was asked is no request ID (it names no recording then)."""
    if actor is None or not actor.active or not actor.is_engineer:
        return ReadDecision.deny(DenyReason.NOT_ENGINEER)
    if saw is None or saw.revoked or not _same(saw.owner_subject, actor.subject):
        return ReadDecision.deny(DenyReason.NO_SAW)
    if recording is None or request_id is None or not _same(recording.request_id, request_id):
        return ReadDecision.deny(DenyReason.NO_RECORDING)
    if recording.shredded:
        return ReadDecision.deny(DenyReason.RECORDING_GONE)
    if recording_expired(recording, now, retention):
        return ReadDecision.deny(DenyReason.RECORDING_EXPIRED)  # even if the purge is late (C7)
    if grant is None:
        return ReadDecision.deny(DenyReason.NO_GRANT)
    if not _same(grant.requester, actor.subject):
        return ReadDecision.deny(DenyReason.GRANT_OTHER_PERSON)
    if request_id not in grant.request_ids:
        return ReadDecision.deny(DenyReason.GRANT_OTHER_RECORDING)
    if grant.revoked:
        return ReadDecision.deny(DenyReason.GRANT_REVOKED)
    if grant.state != AccessRequestState.APPROVED or grant.approved_by is None or grant.expires_at is None:
        return ReadDecision.deny(DenyReason.GRANT_NOT_APPROVED)
    if _same(grant.approved_by, grant.requester):
        return ReadDecision.deny(DenyReason.SELF_APPROVED)
    if not grant.approver_was_manager:
        return ReadDecision.deny(DenyReason.APPROVER_NOT_MANAGER)
    if not _among(grant.approved_by, actor.team_managers):
        return ReadDecision.deny(DenyReason.APPROVER_NOT_PRESENT_MANAGER)  # moved team, or manager stepped down
    if grant.needs_customer_approval and not grant.customer_approved:
        return ReadDecision.deny(DenyReason.CUSTOMER_APPROVAL_MISSING)
    if now >= grant.expires_at:
        return ReadDecision.deny(DenyReason.GRANT_EXPIRED)
    if not _same(grant.ticket_id, recording.ticket_id):
        return ReadDecision.deny(DenyReason.TICKET_MISMATCH)
    if not _among(grant.ticket_id, actor.assigned_tickets):
        return ReadDecision.deny(DenyReason.REQUESTER_NOT_ASSIGNED)  # taken off the ticket since approval
    if consent is None or consent.ended or not _same(consent.ticket_id, grant.ticket_id):
        return ReadDecision.deny(DenyReason.CONSENT_ENDED)
    if not consent.ticket_open:
        return ReadDecision.deny(DenyReason.TICKET_CLOSED)
    return ReadDecision.allow()
