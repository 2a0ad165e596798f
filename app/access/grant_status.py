"""The one state of an access request that every page and the API show (engineer, manager, customer, auditor).

The stored state alone misleads: an approved grant may still wait for the customer (Lockbox), a customer may
have refused it, and a live grant whose recordings were erased reads nothing. `grant_situation` folds the row
and the facts it rests on (the customer's verdict, erasure and retention, consents, the ticket) into one
state, and says which named recordings a read could be allowed for as far as the grant goes. It is pure, so
a test calls it directly; the read itself still runs `decide_read` (C5), which also checks the person, the
SAW and the approver at that moment.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from app.access.states import AccessRequestState
from app.request_id import RequestId
from app.retention.policy import recording_expired

PENDING_LAPSES_AFTER = timedelta(hours=24)


class GrantStatus(StrEnum):
    """What an access request is now, as people read it; the API shows the same value (`status`)."""

    WAITING_FOR_MANAGER = "waiting_for_manager"
    WAITING_FOR_CUSTOMER = "waiting_for_customer"  # the manager approved; Lockbox: the customer has not yet
    APPROVED = "approved"  # until `until`
    EXPIRED = "expired"
    REVOKED = "revoked"  # withdrawn, ended early, or ended by a change of team or assignment
    DENIED = "denied"  # by the manager or by the customer
    LAPSED = "lapsed"  # never decided within 24 h
    CONSENT_ENDED = "consent_ended"  # no named recording is under a consent of the grant's ticket any more
    RECORDING_ERASED = "recording_erased"  # every named recording is erased, purged or past its 30 days

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")

    @property
    def live(self) -> bool:
        """Still on its way to a read, or able to read: the requester may end it, a decider may decide it."""
        return self in (GrantStatus.WAITING_FOR_MANAGER, GrantStatus.WAITING_FOR_CUSTOMER, GrantStatus.APPROVED)


class ItemState(StrEnum):
    """One named recording as far as the grant goes (never shown for a recording the grant does not name)."""

    READABLE = "readable"
    ERASED = "erased"  # shredded (erasure or purge), or past its bucket's 30 days even if the purge is late (C7)
    OTHER_TICKET = "other_ticket"  # recorded under a consent for another ticket of the resource
    CONSENT_ENDED = "consent_ended"  # its consent was withdrawn or ended, or the grant's ticket is closed


@dataclass(frozen=True)
class GrantRecord:
    """The access request's row, as the state needs it."""

    id: str
    ticket_id: str
    state: AccessRequestState
    created_at: datetime
    expires_at: datetime | None
    revoked: bool
    needs_customer_approval: bool
    customer_approved: bool | None  # None: the customer has not decided (or need not)
    request_ids: tuple[RequestId, ...] = ()  # needed only while the row's own state is live (`needs_facts`)


@dataclass(frozen=True)
class RecordingFacts:
    """A named recording and its consent now (from capture and tickets)."""

    request_id: RequestId
    ticket_id: str
    started_at: datetime
    bucket_start: datetime | None
    shredded: bool
    consent_ticket_id: str | None  # None: no consent row
    consent_ended: bool  # withdrawn, erased, or ended by closing the ticket


@dataclass(frozen=True)
class GrantSituation:
    status: GrantStatus
    until: datetime | None = None  # approved or waiting for the customer: when the grant ends by itself
    denied_by_customer: bool = False
    items: Mapping[RequestId, ItemState] = field(default_factory=dict)  # filled while the row's own state is live

    @property
    def readable(self) -> frozenset[RequestId]:
        """Request IDs a read could be allowed for now (so a page links them); empty unless approved."""
        if self.status != GrantStatus.APPROVED:
            return frozenset()
        return frozenset(rid for rid, item in self.items.items() if item == ItemState.READABLE)

    @property
    def waits_for_customer(self) -> bool:
        return self.status == GrantStatus.WAITING_FOR_CUSTOMER


def needs_facts(grant: GrantRecord, now: datetime) -> bool:
    """Whether the state depends on the recordings and consents: only while the row itself is live."""
    return _ended_by_row(grant, now) is None


def _ended_by_row(grant: GrantRecord, now: datetime) -> GrantSituation | None:
    if grant.revoked or grant.state == AccessRequestState.REVOKED:
        return GrantSituation(GrantStatus.REVOKED)
    if grant.state == AccessRequestState.DENIED:
        return GrantSituation(GrantStatus.DENIED)
    if grant.customer_approved is False:  # refused by the customer: no read, ever, whatever time is left
        return GrantSituation(GrantStatus.DENIED, denied_by_customer=True)
    if grant.state == AccessRequestState.LAPSED or (
            grant.state == AccessRequestState.PENDING and now >= grant.created_at + PENDING_LAPSES_AFTER):
        return GrantSituation(GrantStatus.LAPSED)
    if grant.state == AccessRequestState.EXPIRED or (
            grant.state == AccessRequestState.APPROVED and (grant.expires_at is None or now >= grant.expires_at)):
        return GrantSituation(GrantStatus.EXPIRED)
    return None


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def item_state(*, recording: RecordingFacts | None, grant_ticket_id: str, ticket_open: bool, now: datetime,
               retention: timedelta) -> ItemState:
    """The recording-side conditions of `decide_read`, in its order (C5, C7)."""
    if recording is None or recording.shredded or recording_expired(recording, now, retention):
        return ItemState.ERASED
    if not _same(recording.ticket_id, grant_ticket_id):
        return ItemState.OTHER_TICKET
    if (recording.consent_ticket_id is None or recording.consent_ended or not ticket_open
            or not _same(recording.consent_ticket_id, grant_ticket_id)):
        return ItemState.CONSENT_ENDED
    return ItemState.READABLE


def grant_situation(
    *, now: datetime, grant: GrantRecord, recordings: Mapping[RequestId, RecordingFacts], ticket_open: bool,
    retention: timedelta,
) -> GrantSituation:
    """The row's own end first (revoked, denied by manager or customer, lapsed, expired); then the recordings
    (all erased; none under a consent of the ticket); then who it waits for; else approved until it ends."""
    ended = _ended_by_row(grant, now)
    if ended is not None:
        return ended
    items = {rid: item_state(recording=recordings.get(rid), grant_ticket_id=grant.ticket_id,
                             ticket_open=ticket_open, now=now, retention=retention)
             for rid in grant.request_ids}
    if items and all(item == ItemState.ERASED for item in items.values()):
        return GrantSituation(GrantStatus.RECORDING_ERASED, items=items)
    if not any(item == ItemState.READABLE for item in items.values()):
        return GrantSituation(GrantStatus.CONSENT_ENDED, items=items)
    if grant.state == AccessRequestState.PENDING:
        return GrantSituation(GrantStatus.WAITING_FOR_MANAGER, items=items)
    if grant.needs_customer_approval and grant.customer_approved is not True:
        return GrantSituation(GrantStatus.WAITING_FOR_CUSTOMER, until=grant.expires_at, items=items)
    return GrantSituation(GrantStatus.APPROVED, until=grant.expires_at, items=items)
