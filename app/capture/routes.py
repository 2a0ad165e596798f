"""Customer-admin endpoints for their own resource's recordings: list (ids and times only) and erase."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.capture import service
from app.capture.schemas import CustomerRecordingOut, ErasureReceiptOut
from app.deps import ContextDep, SessionDep
from app.identity.principal import Principal, Role, require_role
from app.input_text import SingleLine
from app.tickets.service import customer_resource

router = APIRouter(tags=["customer: recordings"])
CustomerAdmin = Annotated[Principal, Depends(require_role(Role.CUSTOMER_ADMIN))]


@router.get("/customer/resources/{resource}/recordings",
            summary="My resource's recorded sessions: request IDs and times (customer admin)")
async def list_recordings(
    resource: str, actor: CustomerAdmin, session: SessionDep,
    correlation_id: Annotated[SingleLine | None, Query(max_length=128, description="Find the request ID of a "
                                                       "session by the `x-ms-client-request-id` your client sent "
                                                       "(one line, at most 128 characters).")] = None,
) -> list[CustomerRecordingOut]:
    owned = await customer_resource(session=session, principal=actor, name=resource)
    rows = await service.recordings_of_resource(session=session, resource=owned, correlation_id=correlation_id)
    return [CustomerRecordingOut(request_id=r.request_id, started_at=r.started_at, ended_at=r.ended_at,
                                 state=r.state, incomplete_reason=r.incomplete_reason,
                                 correlation_id=r.correlation_id, ticket_id=r.ticket_id, consent_id=r.consent_id)
            for r in rows]


@router.post("/customer/resources/{resource}/consents/{consent_id}/erasure",
             summary="Erase every recording made under a consent, now (customer admin)")
async def erase(resource: str, consent_id: str, actor: CustomerAdmin, session: SessionDep,
                ctx: ContextDep) -> ErasureReceiptOut:
    """Ends the consent, destroys each recording's data key (every copy is unreadable from then on),
    then deletes the blobs. Returns a receipt per recording."""
    owned = await customer_resource(session=session, principal=actor, name=resource)
    receipt = await service.erase_customer_recordings(
        session=session, clock=ctx.clock, keyrings=ctx.keyrings, consents=ctx.consents, stores=ctx.stores,
        recorder=ctx.recorder, actor=actor, resource=owned, consent_id=consent_id, commit=session.commit)
    return ErasureReceiptOut(**asdict(receipt))
