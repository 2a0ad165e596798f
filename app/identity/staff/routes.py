"""`/admin/staff` and `/admin/teams`: the admin token or a staff admin; every change is audited."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from app.deps import ClockDep, SessionDep
from app.identity.staff import service
from app.identity.staff.deps import AdminCallerDep, GrantEnderDep
from app.identity.staff.models import Staff, Team
from app.identity.staff.schemas import ManagerAdd, RolesSet, StaffCreate, StaffOut, StaffUpdate, TeamCreate, TeamOut
from app.input_text import SingleLine

router = APIRouter(tags=["admin: staff and teams"])


def _staff_out(staff: Staff) -> StaffOut:
    return StaffOut.model_validate(staff)


def _team_out(team: Team) -> TeamOut:
    return TeamOut.model_validate(team)


@router.post("/admin/teams", status_code=status.HTTP_201_CREATED, summary="Create a team")
async def create_team(body: TeamCreate, admin: AdminCallerDep, session: SessionDep, clock: ClockDep) -> TeamOut:
    return _team_out(await service.create_team(session=session, clock=clock, actor=admin.actor, data=body))


@router.get("/admin/teams", summary="List teams with their managers")
async def list_teams(_admin: AdminCallerDep, session: SessionDep) -> list[TeamOut]:
    return [_team_out(t) for t in await service.list_teams(session=session)]


@router.get("/admin/teams/{team}", summary="Show a team (by id or name)")
async def show_team(team: str, _admin: AdminCallerDep, session: SessionDep) -> TeamOut:
    return _team_out(await service.resolve_team(session=session, ref=team))


@router.post("/admin/teams/{team}/managers", summary="Add a manager to a team")
async def add_manager(team: str, body: ManagerAdd, admin: AdminCallerDep, session: SessionDep,
                      clock: ClockDep) -> TeamOut:
    updated = await service.add_manager(session=session, clock=clock, actor=admin.actor, team_id=team,
                                        subject=body.subject)
    return _team_out(updated)


@router.delete("/admin/teams/{team}/managers/{subject}", summary="Remove a manager from a team")
async def remove_manager(team: str, subject: str, admin: AdminCallerDep, session: SessionDep,
                         clock: ClockDep) -> TeamOut:
    updated = await service.remove_manager(session=session, clock=clock, actor=admin.actor, team_id=team,
                                           subject=subject)
    return _team_out(updated)


@router.post("/admin/staff", status_code=status.HTTP_201_CREATED, summary="Add a staff member")
async def create_staff(body: StaffCreate, admin: AdminCallerDep, session: SessionDep, clock: ClockDep) -> StaffOut:
    return _staff_out(await service.create_staff(session=session, clock=clock, actor=admin.actor, data=body))


@router.get("/admin/staff", summary="List staff")
async def list_staff(
    _admin: AdminCallerDep, session: SessionDep,
    team: Annotated[SingleLine | None, Query(max_length=64, description="Only this team (id or name).")] = None,
    active_only: Annotated[bool, Query(description="Leave out deactivated people.")] = False,
) -> list[StaffOut]:
    team_id = (await service.resolve_team(session=session, ref=team)).id if team is not None else None
    rows = await service.list_staff(session=session, team_id=team_id, include_inactive=not active_only)
    return [_staff_out(s) for s in rows]


@router.get("/admin/staff/{subject}", summary="Show a staff member")
async def show_staff(subject: str, _admin: AdminCallerDep, session: SessionDep) -> StaffOut:
    return _staff_out(await service.require_staff_record(session=session, subject=subject))


@router.patch("/admin/staff/{subject}", summary="Change a staff member's display name or team")
async def update_staff(subject: str, body: StaffUpdate, admin: AdminCallerDep, session: SessionDep,
                       clock: ClockDep, grant_ender: GrantEnderDep) -> StaffOut:
    """A team change ends the person's grants (audited, the team told as for a revocation)."""
    staff = await service.update_staff(session=session, clock=clock, actor=admin.actor, subject=subject, data=body,
                                       grant_ender=grant_ender)
    await grant_ender.notify_ended(session=session)
    return _staff_out(staff)


@router.put("/admin/staff/{subject}/roles", summary="Set a staff member's roles")
async def set_roles(subject: str, body: RolesSet, admin: AdminCallerDep, session: SessionDep,
                    clock: ClockDep, grant_ender: GrantEnderDep) -> StaffOut:
    staff = await service.set_roles(session=session, clock=clock, actor=admin.actor, subject=subject,
                                    roles=body.roles, grant_ender=grant_ender)
    await grant_ender.notify_ended(session=session)  # losing `engineer` ends grants
    return _staff_out(staff)


@router.post("/admin/staff/{subject}/deactivate", summary="Deactivate a staff member (refused everywhere at once)")
async def deactivate(subject: str, admin: AdminCallerDep, session: SessionDep, clock: ClockDep,
                     grant_ender: GrantEnderDep) -> StaffOut:
    staff = await service.set_active(session=session, clock=clock, actor=admin.actor, subject=subject, active=False,
                                     grant_ender=grant_ender)
    await grant_ender.notify_ended(session=session)
    return _staff_out(staff)


@router.post("/admin/staff/{subject}/activate", summary="Reactivate a staff member")
async def activate(subject: str, admin: AdminCallerDep, session: SessionDep, clock: ClockDep,
                   grant_ender: GrantEnderDep) -> StaffOut:
    staff = await service.set_active(session=session, clock=clock, actor=admin.actor, subject=subject, active=True,
                                     grant_ender=grant_ender)
    return _staff_out(staff)
