"""Tickets, assignments and consents. Every change writes its audit entry in the same transaction (C6)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVarTuple

from sqlalchemy import Select, SQLColumnExpression, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.actions import ID_PATTERN, Actor, AuditAction, Subjects, detail_time
from app.audit.service import append_entry
from app.clock import Clock
from app.errors import Conflict, NotFound
from app.identity.principal import Principal, Role
from app.identity.staff.grant_endings import GrantEnder, GrantEnding
from app.resources.models import Resource
from app.resources.service import ResourceNotFound, get_resource_by_name, require_resource
from app.tickets.models import Consent, Ticket, TicketAssignment
from app.tickets.schemas import ConsentCreate, TicketCreate
from app.tickets.states import ConsentEnding, ConsentState
from app.transaction import after_commit

if TYPE_CHECKING:
    from app.tickets.consent_cache import ConsentCache


class TicketNotFound(NotFound):
    code = "ticket_not_found"
    title = "No such ticket"


class TicketExists(Conflict):
    code = "ticket_exists"
    title = "A ticket with this external reference exists"


class TicketClosed(Conflict):
    code = "ticket_closed"
    title = "The ticket is closed"


class NotAssigned(NotFound):
    code = "not_assigned"
    title = "The engineer is not assigned to this ticket"


class ConsentNotFound(NotFound):
    code = "consent_not_found"
    title = "No such consent"


class ConsentEnded(Conflict):
    code = "consent_ended"
    title = "The consent has already ended"


# --- tickets ----------------------------------------------------------------------------------------


async def create_ticket(*, session: AsyncSession, clock: Clock, actor: Principal, data: TicketCreate) -> Ticket:
    resource = await require_resource(session=session, name=data.resource)
    existing = await session.execute(select(Ticket.id).where(Ticket.external_ref == data.external_ref))
    if existing.first() is not None:
        raise TicketExists(f"Ticket {data.external_ref!r} exists.")
    ticket = Ticket(resource_id=resource.id, external_ref=data.external_ref, created_by=actor.subject,
                    created_at=clock.now())
    session.add(ticket)
    await session.flush()
    await append_entry(session=session, clock=clock, actor=Actor.service(actor.subject),
                       action=AuditAction.TICKET_CREATED,
                       subjects=Subjects(ticket=ticket.id, resource=resource.id),
                       detail={"external_ref": data.external_ref})
    for engineer in dict.fromkeys(data.engineers):
        await assign_engineer(session=session, clock=clock, actor=actor, ticket_id=ticket.id, engineer=engineer)
    return ticket


async def require_ticket(*, session: AsyncSession, ticket_id: str) -> Ticket:
    ticket = await session.get(Ticket, ticket_id)
    if ticket is None:
        raise TicketNotFound()
    return ticket


async def assigned_engineers(*, session: AsyncSession, ticket_id: str) -> list[str]:
    rows = await session.execute(
        select(TicketAssignment.engineer)
        .where(TicketAssignment.ticket_id == ticket_id, TicketAssignment.unassigned_at.is_(None))
        .order_by(TicketAssignment.id)
    )
    return list(rows.scalars())


async def is_assigned(*, session: AsyncSession, ticket_id: str, engineer: str) -> bool:
    return engineer in await assigned_engineers(session=session, ticket_id=ticket_id)


async def tickets_assigned_to(*, session: AsyncSession, engineer: str) -> frozenset[str]:
    """The ids of the tickets this person is assigned to now (open or closed): what a read checks (C5)."""
    rows = await session.execute(
        select(TicketAssignment.ticket_id)
        .where(TicketAssignment.engineer == engineer, TicketAssignment.unassigned_at.is_(None))
    )
    return frozenset(rows.scalars())


async def assign_engineer(
    *, session: AsyncSession, clock: Clock, actor: Principal, ticket_id: str, engineer: str
) -> Ticket:
    ticket = await require_ticket(session=session, ticket_id=ticket_id)
    if not ticket.is_open:
        raise TicketClosed()
    if await is_assigned(session=session, ticket_id=ticket_id, engineer=engineer):
        return ticket  # idempotent: assigning twice changes nothing and audits nothing
    session.add(TicketAssignment(ticket_id=ticket_id, engineer=engineer, assigned_by=actor.subject,
                                 assigned_at=clock.now()))
    await append_entry(session=session, clock=clock, actor=Actor.service(actor.subject),
                       action=AuditAction.TICKET_ASSIGNED, subjects=Subjects(ticket=ticket_id),
                       detail={"engineer": engineer})
    return ticket


async def unassign_engineer(
    *, session: AsyncSession, clock: Clock, actor: Principal, ticket_id: str, engineer: str,
    grant_ender: GrantEnder,
) -> Ticket:
    """The engineer leaves the ticket; their grants under it end (`grant_ender`; the caller tells the team after
    its commit)."""
    ticket = await require_ticket(session=session, ticket_id=ticket_id)
    row = (await session.execute(
        select(TicketAssignment).where(TicketAssignment.ticket_id == ticket_id,
                                       TicketAssignment.engineer == engineer,
                                       TicketAssignment.unassigned_at.is_(None))
    )).scalar_one_or_none()
    if row is None:
        raise NotAssigned()
    row.unassigned_at = clock.now()
    await append_entry(session=session, clock=clock, actor=Actor.service(actor.subject),
                       action=AuditAction.TICKET_UNASSIGNED, subjects=Subjects(ticket=ticket_id),
                       detail={"engineer": engineer})
    # Their grants under this ticket end with the assignment (C5; every read checks it anyway).
    await grant_ender.end_grants_of(session=session, clock=clock, actor=Actor.service(actor.subject),
                                    engineer=engineer, reason=GrantEnding.UNASSIGNED, ticket_id=ticket_id)
    return ticket


async def close_ticket(
    *, session: AsyncSession, clock: Clock, consents: ConsentCache, actor: Principal, ticket_id: str
) -> Ticket:
    """Closing a ticket ends its consents: recording stops and grants under it lose their effect."""
    ticket = await require_ticket(session=session, ticket_id=ticket_id)
    if not ticket.is_open:
        return ticket
    now = clock.now()
    ticket.closed_at = now
    open_consents = await session.execute(
        select(Consent).where(Consent.ticket_id == ticket_id, Consent.ended_at.is_(None))
    )
    for consent in open_consents.scalars():
        await end_consent(session=session, clock=clock, consents=consents, consent=consent,
                          actor=Actor.service(actor.subject), ended_by=actor.subject,
                          reason=ConsentEnding.TICKET_CLOSED, at=now)
    await append_entry(session=session, clock=clock, actor=Actor.service(actor.subject),
                       action=AuditAction.TICKET_CLOSED, subjects=Subjects(ticket=ticket_id))
    return ticket


async def tickets_of_engineer(*, session: AsyncSession, engineer: str) -> Sequence[Ticket]:
    rows = await session.execute(
        select(Ticket).join(TicketAssignment, TicketAssignment.ticket_id == Ticket.id)
        .where(TicketAssignment.engineer == engineer, TicketAssignment.unassigned_at.is_(None))
        .order_by(Ticket.created_at.desc())
    )
    return rows.scalars().unique().all()


# --- consents ---------------------------------------------------------------------------------------


async def customer_resource(*, session: AsyncSession, principal: Principal, name: str) -> Resource:
    """The resource, if this customer admin's tenant owns it; otherwise the same 404 as an unknown name."""
    resource = await get_resource_by_name(session=session, name=name)
    if (resource is None or not principal.has(Role.CUSTOMER_ADMIN) or principal.tenant is None
            or principal.tenant != resource.owner_tenant):
        raise ResourceNotFound()
    return resource


async def consent_ticket(*, session: AsyncSession, resource: Resource, data: ConsentCreate) -> Ticket:
    """The ticket a consent names, by ID or by its reference among this resource's tickets. Another resource's
    ticket, by reference or by ID, is not found (nothing said of tickets the customer cannot see)."""
    if data.ticket_ref is not None:
        found = await session.execute(
            select(Ticket).where(Ticket.resource_id == resource.id, Ticket.external_ref == data.ticket_ref))
        ticket = found.scalar_one_or_none()
        if ticket is None:
            raise TicketNotFound(f"No ticket {data.ticket_ref!r} is about this resource.")
        return ticket
    ticket = await session.get(Ticket, data.ticket_id)
    if ticket is None or ticket.resource_id != resource.id:  # another tenant's ticket: as if there were none
        raise TicketNotFound()
    return ticket


async def grant_consent(
    *, session: AsyncSession, clock: Clock, actor: Principal, resource: Resource, data: ConsentCreate,
    consents: ConsentCache,
) -> Consent:
    """Opt in. Once the caller commits, `consents` (this replica's cache) records the resource's new sessions
    at once; other replicas follow within their refresh (C1 holds: nothing is recorded before the commit). The
    cache is required, as for withdrawing: a caller that could leave it out would record late (issue 16)."""
    ticket = await consent_ticket(session=session, resource=resource, data=data)
    if not ticket.is_open:
        raise TicketClosed()
    now = clock.now()
    consent = Consent(resource_id=resource.id, ticket_id=ticket.id, granted_by=actor.subject, granted_at=now,
                      not_before=now, not_after=now + timedelta(days=data.days),
                      require_customer_approval=data.require_customer_approval)
    session.add(consent)
    await session.flush()
    await append_entry(session=session, clock=clock, actor=Actor.customer_admin(actor.subject),
                       action=AuditAction.CONSENT_GRANTED,
                       subjects=Subjects(ticket=ticket.id, resource=resource.id),
                       detail={"consent": consent.id, "not_before": detail_time(consent.not_before),
                               "not_after": detail_time(consent.not_after)})
    granted = ActiveConsent(consent.id, ticket.id, resource.id, consent.not_after)
    after_commit(session, lambda: consents.learn(granted))
    return consent


async def require_consent(*, session: AsyncSession, resource: Resource, consent_id: str) -> Consent:
    consent = await session.get(Consent, consent_id)
    if consent is None or consent.resource_id != resource.id:
        raise ConsentNotFound()
    return consent


async def end_consent(
    *, session: AsyncSession, clock: Clock, consents: ConsentCache, consent: Consent, actor: Actor, ended_by: str,
    reason: ConsentEnding, at: datetime,
) -> None:
    """The one way a consent ends (withdrawn, ticket closed, erased): recorded, audited, and once the caller's
    transaction commits, this replica's consent cache forgets the resource (C1: recording stops at once)."""
    consent.ended_at, consent.ended_by, consent.end_reason = at, ended_by, reason
    await append_entry(session=session, clock=clock, actor=actor, action=AuditAction.CONSENT_WITHDRAWN,
                       subjects=Subjects(ticket=consent.ticket_id, resource=consent.resource_id),
                       detail={"consent": consent.id})
    resource_id = consent.resource_id
    after_commit(session, lambda: consents.forget(resource_id))


async def withdraw_consent(
    *, session: AsyncSession, clock: Clock, consents: ConsentCache, actor: Principal, resource: Resource,
    consent_id: str,
) -> Consent:
    consent = await require_consent(session=session, resource=resource, consent_id=consent_id)
    now = clock.now()
    if consent.ended_at is not None or consent.not_after <= now:
        raise ConsentEnded()
    await end_consent(session=session, clock=clock, consents=consents, consent=consent,
                      actor=Actor.customer_admin(actor.subject), ended_by=actor.subject,
                      reason=ConsentEnding.WITHDRAWN, at=now)
    return consent


async def consents_of_resource(*, session: AsyncSession, resource: Resource) -> Sequence[Consent]:
    rows = await session.execute(
        select(Consent).where(Consent.resource_id == resource.id).order_by(Consent.granted_at.desc())
    )
    return rows.scalars().all()


def consent_state(consent: Consent, now: datetime) -> ConsentState:
    """What the API and the console show: why it ended (an ended row without a reason reads as withdrawn), else
    where `now` falls in its window."""
    if consent.ended_at is not None:
        return ConsentState.ended(consent.end_reason or ConsentEnding.WITHDRAWN)
    if now < consent.not_before:
        return ConsentState.SCHEDULED
    return ConsentState.ACTIVE if now < consent.not_after else ConsentState.EXPIRED


@dataclass(frozen=True)
class ActiveConsent:
    consent_id: str
    ticket_id: str
    resource_id: str
    not_after: datetime


async def active_consents(*, session: AsyncSession, now: datetime) -> list[ActiveConsent]:
    """Every consent in force now, on an open ticket; the relay's cache is built from this (C1)."""
    rows = await session.execute(
        select(Consent.id, Consent.ticket_id, Consent.resource_id, Consent.not_after)
        .join(Ticket, Ticket.id == Consent.ticket_id)
        .where(Consent.ended_at.is_(None), Consent.not_before <= now, Consent.not_after > now,
               Ticket.closed_at.is_(None))
        .order_by(Consent.granted_at)
    )
    return [ActiveConsent(r.id, r.ticket_id, r.resource_id, r.not_after) for r in rows]


@dataclass(frozen=True)
class TicketView:
    """A ticket as other domains read it (they never query the tickets table themselves)."""

    id: str
    resource_id: str
    external_ref: str
    is_open: bool


async def ticket_view(*, session: AsyncSession, ticket_id: str) -> TicketView | None:
    """One ticket by ID (a primary-key get: one lookup, none when the session already holds it). An ID that
    no ticket could have (a console form's raw value: a NUL, which PostgreSQL refuses in text) is none."""
    if not ID_PATTERN.fullmatch(ticket_id):
        return None
    ticket = await session.get(Ticket, ticket_id)
    if ticket is None:
        return None
    return TicketView(id=ticket.id, resource_id=ticket.resource_id, external_ref=ticket.external_ref,
                      is_open=ticket.is_open)


@dataclass(frozen=True)
class ConsentFacts:
    """A consent as other domains read it: whose ticket, whether it has ended."""

    id: str
    ticket_id: str
    ended: bool


async def consent_facts(*, session: AsyncSession, consent_id: str) -> ConsentFacts | None:
    """One consent by ID (a primary-key get, as `ticket_view`)."""
    consent = await session.get(Consent, consent_id)
    if consent is None:
        return None
    return ConsentFacts(id=consent.id, ticket_id=consent.ticket_id, ended=consent.ended_at is not None)


async def consent_covers(*, session: AsyncSession, consent_id: str, session_start: datetime) -> bool:
    """True when the consent exists and was in force when a session began, and is not erased since (C1)."""
    consent = await session.get(Consent, consent_id)
    return consent is not None and consent.covers(session_start)


async def needs_customer_approval(*, session: AsyncSession, ticket_id: str) -> bool:
    """True when any consent on the ticket asks for the customer's approval of each grant (Lockbox)."""
    lockbox = await session.execute(select(Consent.id).where(Consent.ticket_id == ticket_id,
                                                             Consent.require_customer_approval.is_(True)))
    return lockbox.first() is not None


async def resource_has_tickets(*, session: AsyncSession, resource_id: str) -> bool:
    """True when any ticket (open or closed) is about the resource: one query."""
    tickets = await session.execute(select(Ticket.id).where(Ticket.resource_id == resource_id).limit(1))
    return tickets.first() is not None


_Columns = TypeVarTuple("_Columns")


def with_ticket_ref_of_resource(
    query: Select[*_Columns], *, ticket_id: SQLColumnExpression[str], resource_id: str,
) -> Select[*_Columns, str]:
    """`query` kept to rows whose `ticket_id` is a ticket about the resource, that ticket's external reference
    added as the last column: a join in the caller's one statement."""
    return (query.add_columns(Ticket.external_ref).join(Ticket, Ticket.id == ticket_id)
            .where(Ticket.resource_id == resource_id))
