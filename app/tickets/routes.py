"""Ticketing-system API (role `ticketing`), customer-admin consents (role `customer_admin`), my tickets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status
from sqlalchemy.ext.asyncio import AsyncSession

from app.deps import ClockDep, SessionDep
from app.identity.principal import Principal, Role, require_role
from app.identity.staff.deps import GrantEnderDep, StaffEngineer
from app.resources.models import Resource
from app.resources.service import get_resource
from app.tickets import service
from app.tickets.consent_cache import ConsentsDep
from app.tickets.models import Consent, Ticket
from app.tickets.schemas import AssignmentCreate, ConsentCreate, ConsentOut, TicketCreate, TicketOut
from app.tickets.states import ConsentState

router = APIRouter(tags=["tickets"])
Ticketing = Annotated[Principal, Depends(require_role(Role.TICKETING))]
CustomerAdmin = Annotated[Principal, Depends(require_role(Role.CUSTOMER_ADMIN))]


async def _ticket_out(session: AsyncSession, ticket: Ticket) -> TicketOut:
    resource = await get_resource(session=session, resource_id=ticket.resource_id)
    return TicketOut(id=ticket.id, resource=resource.name if resource else "", external_ref=ticket.external_ref,
                     state="open" if ticket.is_open else "closed",
                     engineers=await service.assigned_engineers(session=session, ticket_id=ticket.id),
                     created_at=ticket.created_at, closed_at=ticket.closed_at)


async def _consent_out(session: AsyncSession, consent: Consent, resource: Resource, clock: ClockDep,
                       consents: ConsentsDep) -> ConsentOut:
    ticket = await service.require_ticket(session=session, ticket_id=consent.ticket_id)
    state = service.consent_state(consent, clock.now())
    return ConsentOut(id=consent.id, resource=resource.name, ticket_id=consent.ticket_id,
                      ticket_ref=ticket.external_ref, state=state,
                      not_before=consent.not_before, not_after=consent.not_after, granted_by=consent.granted_by,
                      granted_at=consent.granted_at, ended_at=consent.ended_at,
                      require_customer_approval=consent.require_customer_approval,
                      recording_from=consents.recording_from(consent.not_before)
                      if state in (ConsentState.ACTIVE, ConsentState.SCHEDULED) else None)


@router.post("/tickets", status_code=status.HTTP_201_CREATED, summary="File a ticket (ticketing system)")
async def create_ticket(body: TicketCreate, actor: Ticketing, session: SessionDep, clock: ClockDep) -> TicketOut:
    ticket = await service.create_ticket(session=session, clock=clock, actor=actor, data=body)
    return await _ticket_out(session, ticket)


@router.get("/tickets/{ticket_id}", summary="Show a ticket (ticketing system)")
async def show_ticket(ticket_id: str, _actor: Ticketing, session: SessionDep) -> TicketOut:
    return await _ticket_out(session, await service.require_ticket(session=session, ticket_id=ticket_id))


@router.post("/tickets/{ticket_id}/engineers", summary="Assign an engineer (ticketing system)")
async def assign(ticket_id: str, body: AssignmentCreate, actor: Ticketing, session: SessionDep,
                 clock: ClockDep) -> TicketOut:
    ticket = await service.assign_engineer(session=session, clock=clock, actor=actor, ticket_id=ticket_id,
                                           engineer=body.engineer)
    return await _ticket_out(session, ticket)


@router.delete("/tickets/{ticket_id}/engineers/{engineer}", summary="Unassign an engineer (ticketing system)")
async def unassign(ticket_id: str, engineer: str, actor: Ticketing, session: SessionDep, clock: ClockDep,
                   grant_ender: GrantEnderDep) -> TicketOut:
    """Their grants under this ticket end too (audited, the team told as for a revocation)."""
    ticket = await service.unassign_engineer(session=session, clock=clock, actor=actor, ticket_id=ticket_id,
                                             engineer=engineer, grant_ender=grant_ender)
    await grant_ender.notify_ended(session=session)
    return await _ticket_out(session, ticket)


@router.post("/tickets/{ticket_id}/close", summary="Close a ticket; its consents end")
async def close(ticket_id: str, actor: Ticketing, session: SessionDep, clock: ClockDep,
                consents: ConsentsDep) -> TicketOut:
    ticket = await service.close_ticket(session=session, clock=clock, consents=consents, actor=actor,
                                        ticket_id=ticket_id)
    return await _ticket_out(session, ticket)


@router.get("/me/tickets", summary="Open tickets I am assigned to (engineer)")
async def my_tickets(actor: StaffEngineer, session: SessionDep) -> list[TicketOut]:
    tickets = await service.tickets_of_engineer(session=session, engineer=actor.subject)
    return [await _ticket_out(session, t) for t in tickets if t.is_open]


@router.post("/customer/resources/{resource}/consents", status_code=status.HTTP_201_CREATED,
             summary="Opt in: record this resource's sessions for a ticket (customer admin)")
async def grant_consent(resource: str, body: ConsentCreate, actor: CustomerAdmin, session: SessionDep,
                        clock: ClockDep, consents: ConsentsDep) -> ConsentOut:
    """Name the ticket by `ticket_ref` (as support gave it) or `ticket_id`. Sessions that reach this replica
    are recorded from the answer on; every replica records from `recording_from` (a few seconds later)."""
    owned = await service.customer_resource(session=session, principal=actor, name=resource)
    consent = await service.grant_consent(session=session, clock=clock, actor=actor, resource=owned, data=body,
                                          consents=consents)
    return await _consent_out(session, consent, owned, clock, consents)


@router.get("/customer/resources/{resource}/consents", summary="My resource's consents (customer admin)")
async def list_consents(resource: str, actor: CustomerAdmin, session: SessionDep, clock: ClockDep,
                        consents: ConsentsDep) -> list[ConsentOut]:
    owned = await service.customer_resource(session=session, principal=actor, name=resource)
    return [await _consent_out(session, c, owned, clock, consents)
            for c in await service.consents_of_resource(session=session, resource=owned)]


@router.post("/customer/resources/{resource}/consents/{consent_id}/withdraw",
             summary="Withdraw a consent: recording stops (customer admin)")
async def withdraw_consent(resource: str, consent_id: str, actor: CustomerAdmin, session: SessionDep,
                           clock: ClockDep, consents: ConsentsDep) -> ConsentOut:
    owned = await service.customer_resource(session=session, principal=actor, name=resource)
    consent = await service.withdraw_consent(session=session, clock=clock, consents=consents, actor=actor,
                                             resource=owned, consent_id=consent_id)
    return await _consent_out(session, consent, owned, clock, consents)
