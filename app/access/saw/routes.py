"""`/admin/saws` (admin token or staff admin) and `/access/saw/me` (an engineer: which SAW am I on?)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from app.access.saw import service
from app.access.saw.schemas import SawOut, SawRegister, SawRevoke
from app.access.saw.trust import require_current_saw
from app.deps import ClockDep, SessionDep, SettingsDep
from app.identity.staff.deps import AdminCallerDep, StaffEngineer
from app.input_text import Identifier

router = APIRouter(tags=["secure access workstations"])


@router.post("/admin/saws", status_code=status.HTTP_201_CREATED, summary="Register a SAW for one staff member")
async def register_saw(body: SawRegister, admin: AdminCallerDep, session: SessionDep, clock: ClockDep) -> SawOut:
    """Bind a client certificate (PEM, or its SHA-256) to one active staff member."""
    return SawOut.model_validate(await service.register_saw(session=session, clock=clock, actor=admin.actor,
                                                            data=body))


@router.get("/admin/saws", summary="List registered SAWs")
async def list_saws(
    _admin: AdminCallerDep, session: SessionDep,
    owner: Annotated[Identifier | None, Query(description="Only this person's devices (their subject).")] = None,
    active_only: Annotated[bool, Query(description="Leave out revoked devices.")] = False,
) -> list[SawOut]:
    rows = await service.list_saws(session=session, owner=owner, include_revoked=not active_only)
    return [SawOut.model_validate(s) for s in rows]


@router.get("/admin/saws/{saw_id}", summary="Show a SAW")
async def show_saw(saw_id: str, _admin: AdminCallerDep, session: SessionDep) -> SawOut:
    return SawOut.model_validate(await service.require_saw(session=session, saw_id=saw_id))


@router.post("/admin/saws/{saw_id}/revoke", summary="Revoke a SAW (takes effect on its next request)")
async def revoke_saw(saw_id: str, body: SawRevoke, admin: AdminCallerDep, session: SessionDep,
                     clock: ClockDep) -> SawOut:
    saw = await service.revoke_saw(session=session, clock=clock, actor=admin.actor, saw_id=saw_id, reason=body.reason)
    return SawOut.model_validate(saw)


@router.get("/access/saw/me", summary="The SAW this request comes from (engineer)")
async def my_saw(actor: StaffEngineer, request: Request, session: SessionDep, settings: SettingsDep) -> SawOut:
    """403 `saw_required` unless the request comes, through the mTLS proxy, from a registered, unrevoked SAW
    bound to the caller."""
    return SawOut.model_validate(await require_current_saw(session=session, request=request,
                                                           owner_subject=actor.subject, settings=settings.saw))
