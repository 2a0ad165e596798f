"""Just-in-time access: request, approve (manager of the requester's team, never the requester), deny,
revoke, extend, expire and lapse. Every step is an audit entry in the same transaction (C5, C6)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, TypeAlias

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.grant_facts import grant_situation_of
from app.access.grant_status import PENDING_LAPSES_AFTER, GrantStatus
from app.access.models import AccessRequest, AccessRequestItem
from app.access.policy import GrantView
from app.access.states import AccessRequestState
from app.audit.actions import Actor, AuditAction, Subjects, detail_time
from app.audit.service import append_entry
from app.capture.service import recordings_among
from app.clock import Clock
from app.errors import Conflict, Forbidden, InvalidInput, NotFound
from app.input_text import audit_form
from app.request_id import RequestId, is_request_id
from app.tickets.service import is_assigned, needs_customer_approval, ticket_view

AccessRequestRow: TypeAlias = AccessRequest
"""An access request's row as other domains hold it (the console's pages): returned by this module, read,
handed back; never queried by them."""

MIN_JUSTIFICATION = 20


@dataclass(frozen=True)
class Person:
    """What access needs to know of a staff member (from the staff directory)."""

    subject: str
    team_id: str | None
    active: bool
    roles: frozenset[str]


class StaffDirectory(Protocol):
    async def person(self, session: AsyncSession, subject: str) -> Person | None: ...

    async def managers(self, session: AsyncSession, team_id: str) -> set[str]: ...

    async def teams_managed(self, session: AsyncSession, subject: str) -> list[str]: ...


class NotStaff(Forbidden):
    code = "not_staff"
    title = "You need an active staff record with this role"


class AccessRequestNotFound(NotFound):
    code = "access_request_not_found"
    title = "No such access request"


class NotAssignedToTicket(Forbidden):
    code = "not_assigned_to_ticket"
    title = "You are not assigned to this ticket"


class InvalidJustification(InvalidInput):
    code = "invalid_justification"
    title = "The justification must explain the need and name the ticket"


class SelfApproval(Forbidden):
    code = "self_approval"
    title = "Nobody approves their own access request"


class NotTheirManager(Forbidden):
    code = "not_requesters_manager"
    title = "Only a manager of the requester's team decides"


class RequesterNotEligible(Conflict):
    code = "requester_not_eligible"
    title = "The requester is no longer an active engineer assigned to the ticket"


class UnknownRequestIds(InvalidInput):
    """One answer for an ID that is no recording and for one of another resource: nothing is revealed."""

    code = "unknown_request_ids"
    title = "Name request IDs of recordings of the ticket's resource"


class NotPending(Conflict):
    code = "not_pending"
    title = "The request is no longer pending"


class NotActiveGrant(Conflict):
    code = "grant_not_active"
    title = "The grant is not active"


class CustomerAlreadyDecided(Conflict):
    code = "customer_already_decided"
    title = "You have already decided this request"


class NotWaitingForCustomer(Conflict):
    code = "not_waiting_for_customer"
    title = "The request is not waiting for your approval"


class TicketNotOpen(Conflict):
    code = "ticket_closed"
    title = "The ticket is closed"


@dataclass(frozen=True)
class NewAccessRequest:
    ticket_id: str
    request_ids: Sequence[str]  # as asked (checked by `create_access_request`), or a grant's own when extending
    justification: str
    duration: timedelta


async def _named_request_ids(session: AsyncSession, access_request_id: str) -> list[RequestId]:
    rows = await session.execute(select(AccessRequestItem.request_id)
                                 .where(AccessRequestItem.access_request_id == access_request_id)
                                 .order_by(AccessRequestItem.request_id))
    return list(rows.scalars())


async def request_ids_of(*, session: AsyncSession, access_request: AccessRequest) -> list[RequestId]:
    return await _named_request_ids(session, access_request.id)


async def require_access_request(*, session: AsyncSession, access_request_id: str) -> AccessRequest:
    row = await session.get(AccessRequest, access_request_id)
    if row is None:
        raise AccessRequestNotFound()
    return row


async def create_access_request(
    *, session: AsyncSession, clock: Clock, actor: Person, data: NewAccessRequest,
    extends: AccessRequest | None = None,
) -> AccessRequest:
    """An engineer assigned to the ticket asks for named request IDs, each a recording of the ticket's
    resource; an unknown ID and another resource's get one answer, so asking tells nothing beyond the
    ticket's own resource (C4)."""
    if not actor.active or "engineer" not in actor.roles:
        raise NotStaff("This needs an active staff record with the engineer role.")
    ticket = await ticket_view(session=session, ticket_id=data.ticket_id)
    if ticket is None or not await is_assigned(session=session, ticket_id=data.ticket_id, engineer=actor.subject):
        raise NotAssignedToTicket()
    if not ticket.is_open:
        raise TicketNotOpen()
    asked = list(dict.fromkeys(data.request_ids))
    ids = [i for i in asked if is_request_id(i)]
    if not 1 <= len(asked) <= 20 or len(ids) != len(asked):
        raise InvalidInput("Name 1 to 20 request IDs (32 hex digits each).")
    if not await _all_of_resource(session, ids, ticket.resource_id):
        raise UnknownRequestIds("Every request ID must be a recording of the resource this ticket is about.")
    justification = data.justification.strip()
    if len(justification) < MIN_JUSTIFICATION or ticket.external_ref.lower() not in justification.lower():
        raise InvalidJustification(
            f"At least {MIN_JUSTIFICATION} characters, naming the ticket ({ticket.external_ref}).")
    if not timedelta(minutes=5) <= data.duration <= timedelta(hours=8):
        raise InvalidInput("The duration must be between 5 minutes and 8 hours.")
    lockbox = await needs_customer_approval(session=session, ticket_id=ticket.id)
    row = AccessRequest(
        requester=actor.subject, requester_team_id=actor.team_id, ticket_id=ticket.id,
        justification=justification, requested_duration_s=int(data.duration.total_seconds()),
        created_at=clock.now(), state=AccessRequestState.PENDING, extends_id=extends.id if extends else None,
        needs_customer_approval=lockbox, approver_was_manager=False,
    )
    session.add(row)
    await session.flush()
    session.add_all([AccessRequestItem(access_request_id=row.id, request_id=i) for i in ids])
    await append_entry(session=session, clock=clock, actor=Actor.staff(actor.subject),
                       action=AuditAction.ACCESS_REQUESTED, subjects=Subjects(grant=row.id, ticket=ticket.id),
                       detail={"request_ids": ids, "justification": audit_form(justification, 1000),
                               "duration_s": row.requested_duration_s})
    return row


def _lapsed(row: AccessRequest, now: datetime) -> bool:
    return row.state == AccessRequestState.PENDING and now >= row.created_at + PENDING_LAPSES_AFTER


async def _all_of_resource(session: AsyncSession, ids: list[RequestId], resource_id: str) -> bool:
    """One query whatever the IDs are: unknown and other-resource IDs look alike, also in time (C4)."""
    # A copy as list[str]: capture's recordings_among is still typed for plain strings.
    return await recordings_among(session=session, request_ids=list(ids), resource_id=resource_id) == set(ids)


async def _check_decider(
    *, session: AsyncSession, directory: StaffDirectory, row: AccessRequest, actor: Person,
    requester_must_qualify: bool = True,
) -> None:
    """The actor is an active manager of the requester's team as the staff directory says now (not as it
    was when they asked), never the requester; to grant, the requester must still be an active engineer
    assigned to the ticket. Ending access (deny, revoke) only needs the manager relation (C5)."""
    if actor.subject == row.requester:
        raise SelfApproval()
    requester = await directory.person(session, row.requester)
    team = requester.team_id if requester is not None else None
    if team is None or not actor.active or "manager" not in actor.roles:
        raise NotTheirManager()
    if actor.subject not in await directory.managers(session, team):
        raise NotTheirManager()
    if requester_must_qualify and not await _still_qualifies(session, requester, row.ticket_id):
        raise RequesterNotEligible()


async def _still_qualifies(session: AsyncSession, person: Person | None, ticket_id: str) -> bool:
    if person is None or not person.active or "engineer" not in person.roles:
        return False
    return await is_assigned(session=session, ticket_id=ticket_id, engineer=person.subject)


async def approve(
    *, session: AsyncSession, clock: Clock, directory: StaffDirectory, access_request_id: str, actor: Person,
    duration: timedelta | None = None,
) -> AccessRequest:
    """Approve, optionally for less time than asked. The grant starts now and expires by itself."""
    row = await require_access_request(session=session, access_request_id=access_request_id)
    await _check_decider(session=session, directory=directory, row=row, actor=actor)
    now = clock.now()
    if row.state != AccessRequestState.PENDING or _lapsed(row, now):
        raise NotPending()
    granted = int(min(duration.total_seconds(), row.requested_duration_s) if duration else row.requested_duration_s)
    if granted < 60:
        raise InvalidInput("A grant lasts at least one minute.")
    row.state, row.decided_by, row.decided_at = AccessRequestState.APPROVED, actor.subject, now
    row.approver_was_manager = True
    row.granted_duration_s, row.expires_at = granted, now + timedelta(seconds=granted)
    await append_entry(session=session, clock=clock, actor=Actor.staff(actor.subject),
                       action=AuditAction.ACCESS_APPROVED, subjects=Subjects(grant=row.id, ticket=row.ticket_id),
                       detail={"requester": row.requester, "expires_at": detail_time(row.expires_at),
                               "duration_s": granted})
    return row


async def deny(
    *, session: AsyncSession, clock: Clock, directory: StaffDirectory, access_request_id: str, actor: Person,
    reason: str,
) -> AccessRequest:
    row = await require_access_request(session=session, access_request_id=access_request_id)
    await _check_decider(session=session, directory=directory, row=row, actor=actor,
                         requester_must_qualify=False)
    now = clock.now()
    if row.state != AccessRequestState.PENDING or _lapsed(row, now):
        raise NotPending()
    row.state, row.decided_by, row.decided_at = AccessRequestState.DENIED, actor.subject, now
    row.decision_reason = reason[:200]
    await append_entry(session=session, clock=clock, actor=Actor.staff(actor.subject),
                       action=AuditAction.ACCESS_DENIED, subjects=Subjects(grant=row.id, ticket=row.ticket_id),
                       detail={"requester": row.requester, "reason": reason[:64] or "denied"})
    return row


async def revoke(
    *, session: AsyncSession, clock: Clock, directory: StaffDirectory, access_request_id: str, actor: Person,
    reason: str,
) -> AccessRequest:
    """The requester or a manager of their team ends a grant (or withdraws a pending access request) at once."""
    row = await require_access_request(session=session, access_request_id=access_request_id)
    if actor.subject != row.requester:
        await _check_decider(session=session, directory=directory, row=row, actor=actor,
                             requester_must_qualify=False)
    now = clock.now()
    if row.state not in (AccessRequestState.PENDING, AccessRequestState.APPROVED) or row.revoked_at is not None:
        raise NotActiveGrant()
    row.state, row.revoked_at, row.revoked_by = AccessRequestState.REVOKED, now, actor.subject
    row.revoke_reason = reason[:200]
    await append_entry(session=session, clock=clock, actor=Actor.staff(actor.subject),
                       action=AuditAction.ACCESS_REVOKED, subjects=Subjects(grant=row.id, ticket=row.ticket_id),
                       detail={"reason": reason[:64] or "revoked"})
    return row


async def extend(
    *, session: AsyncSession, clock: Clock, access_request_id: str, actor: Person, duration: timedelta,
    justification: str,
) -> AccessRequest:
    """Ask, before expiry, for more time on the same recordings: a new access request that needs a new approval."""
    row = await require_access_request(session=session, access_request_id=access_request_id)
    if row.requester != actor.subject:
        raise AccessRequestNotFound()
    now = clock.now()
    if row.state != AccessRequestState.APPROVED or row.expires_at is None or now >= row.expires_at:
        raise NotActiveGrant()
    if actor.team_id != row.requester_team_id:  # moved since: the grant was her old team's to give (C5)
        raise NotActiveGrant()
    return await create_access_request(
        session=session, clock=clock, actor=actor, extends=row,
        data=NewAccessRequest(ticket_id=row.ticket_id, request_ids=await _named_request_ids(session, row.id),
                        justification=justification, duration=duration))


async def customer_decide(
    *, session: AsyncSession, clock: Clock, access_request_id: str, actor: str, resource_id: str, approve: bool,
    retention: timedelta,
) -> AccessRequest:
    """Customer Lockbox: the resource's admin approves (or refuses) a grant on their recordings, once, while it
    waits for them (`GrantStatus.WAITING_FOR_CUSTOMER`: approved by the manager, live, something to read).
    A request of another resource and an unknown ID get one answer. The row is locked, so two verdicts sent at
    once are one decision and one audit entry (the other sees it decided)."""
    row = (await session.execute(select(AccessRequest).where(AccessRequest.id == access_request_id)
                                 .with_for_update().execution_options(populate_existing=True))).scalar_one_or_none()
    if row is None:
        raise AccessRequestNotFound()
    ticket = await ticket_view(session=session, ticket_id=row.ticket_id)
    if ticket is None or ticket.resource_id != resource_id or not row.needs_customer_approval:
        raise AccessRequestNotFound()
    if row.customer_decided_at is not None:
        raise CustomerAlreadyDecided(f"You {'approved' if row.customer_approved else 'refused'} it at "
                                     f"{row.customer_decided_at:%Y-%m-%d %H:%M} UTC.")
    now = clock.now()
    situation = await grant_situation_of(session=session, row=row, now=now, retention=retention)
    if situation.status != GrantStatus.WAITING_FOR_CUSTOMER:
        raise NotWaitingForCustomer(f"It is {situation.status.label}.")
    row.customer_decided_by, row.customer_decided_at, row.customer_approved = actor, now, approve
    action = AuditAction.ACCESS_APPROVED if approve else AuditAction.ACCESS_DENIED
    detail: dict[str, str | int] = {"requester": row.requester}
    if approve:
        detail["expires_at"] = detail_time(row.expires_at or now)
    else:
        detail["reason"] = "customer_refused"
    await append_entry(session=session, clock=clock, actor=Actor.customer_admin(actor), action=action,
                       subjects=Subjects(grant=row.id, ticket=row.ticket_id), detail=detail)
    await session.flush()
    return row


EXPIRY_WARNING = timedelta(minutes=15)


async def expiring_soon(*, session: AsyncSession, clock: Clock, limit: int = 500) -> Sequence[AccessRequest]:
    """Scheduled: grants ending within 15 minutes not yet warned about (each is returned once)."""
    now = clock.now()
    rows = (await session.execute(
        select(AccessRequest).where(AccessRequest.state == AccessRequestState.APPROVED,
                                    AccessRequest.expiry_warned_at.is_(None),
                                    AccessRequest.expires_at > now, AccessRequest.expires_at <= now + EXPIRY_WARNING)
        .limit(limit).with_for_update(skip_locked=True))).scalars().all()
    for row in rows:
        row.expiry_warned_at = now
    await session.flush()
    return rows


async def expire_and_lapse(
    *, session: AsyncSession, clock: Clock, limit: int = 500,
) -> tuple[Sequence[AccessRequest], Sequence[AccessRequest]]:
    """Scheduled: mark grants past their end `expired` and requests unreviewed for 24 h `lapsed`."""
    now = clock.now()
    expired = (await session.execute(
        select(AccessRequest).where(AccessRequest.state == AccessRequestState.APPROVED, AccessRequest.expires_at <= now)
        .limit(limit).with_for_update(skip_locked=True))).scalars().all()
    for row in expired:
        row.state = AccessRequestState.EXPIRED
        await append_entry(session=session, clock=clock, actor=Actor.system("access"),
                           action=AuditAction.ACCESS_EXPIRED, subjects=Subjects(grant=row.id, ticket=row.ticket_id))
    lapsed = (await session.execute(
        select(AccessRequest).where(AccessRequest.state == AccessRequestState.PENDING,
                                    AccessRequest.created_at <= now - PENDING_LAPSES_AFTER)
        .limit(limit).with_for_update(skip_locked=True))).scalars().all()
    for row in lapsed:
        row.state, row.decided_at, row.decision_reason = AccessRequestState.LAPSED, now, "unreviewed for 24 h"
        await append_entry(session=session, clock=clock, actor=Actor.system("access"),
                           action=AuditAction.ACCESS_DENIED, subjects=Subjects(grant=row.id, ticket=row.ticket_id),
                           detail={"requester": row.requester, "reason": "lapsed"})
    return expired, lapsed


async def access_requests_of(*, session: AsyncSession, requester: str) -> Sequence[AccessRequest]:
    rows = await session.execute(select(AccessRequest).where(AccessRequest.requester == requester)
                                 .order_by(AccessRequest.created_at.desc()).limit(200))
    return rows.scalars().all()


async def queue_for(*, session: AsyncSession, actor: Person, team_ids: Sequence[str]) -> Sequence[AccessRequest]:
    """Pending access requests of the teams this person manages, never their own."""
    if not team_ids:
        return []
    rows = await session.execute(
        select(AccessRequest).where(AccessRequest.state == AccessRequestState.PENDING,
                                    AccessRequest.requester_team_id.in_(list(team_ids)),
                                    AccessRequest.requester != actor.subject)
        .order_by(AccessRequest.created_at))
    return rows.scalars().all()


async def requests_of_teams(*, session: AsyncSession, team_ids: Sequence[str], limit: int = 50
                            ) -> Sequence[AccessRequest]:
    """The latest access requests of these teams' engineers, whatever their state (a manager's overview)."""
    if not team_ids:
        return []
    rows = await session.execute(select(AccessRequest).where(AccessRequest.requester_team_id.in_(list(team_ids)))
                                 .order_by(AccessRequest.created_at.desc()).limit(limit))
    return rows.scalars().all()


async def access_requests_by_ids(*, session: AsyncSession, ids: Sequence[str]) -> dict[str, AccessRequest]:
    """Rows by access request ID (the auditor's page looks up the grants its report names)."""
    found: dict[str, AccessRequest] = {}
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), 500):
        rows = await session.execute(select(AccessRequest).where(AccessRequest.id.in_(unique[start:start + 500])))
        found.update((row.id, row) for row in rows.scalars())
    return found


async def grant_for_read(
    *, session: AsyncSession, requester: str, request_id: RequestId, now: datetime,
) -> GrantView | None:
    """The requester's best grant naming `request_id`: an active one if any, else the latest (for the reason)."""
    rows = (await session.execute(
        select(AccessRequest).join(AccessRequestItem, AccessRequestItem.access_request_id == AccessRequest.id)
        .where(AccessRequest.requester == requester, AccessRequestItem.request_id == request_id)
        .order_by(AccessRequest.created_at.desc()).limit(20))).scalars().all()
    if not rows:
        return None
    # A grant the customer refused never reads: it must not hide another live grant naming the same ID.
    active = [r for r in rows
              if r.state == AccessRequestState.APPROVED and r.expires_at is not None and r.expires_at > now
              and r.customer_approved is not False]
    row = active[0] if active else rows[0]
    return GrantView(
        id=row.id, requester=row.requester, ticket_id=row.ticket_id,
        request_ids=frozenset(await _named_request_ids(session, row.id)), state=row.state, approved_by=row.decided_by,
        approver_was_manager=row.approver_was_manager, expires_at=row.expires_at,
        revoked=row.revoked_at is not None, needs_customer_approval=row.needs_customer_approval,
        customer_approved=bool(row.customer_approved),
    )
