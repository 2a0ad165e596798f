"""Staff records and teams. Every change writes its audit entry in the same transaction (C6).

`get_staff` and `managers_of` are what the access policy asks; `authorize_staff` is the check behind
`require_staff`: the token's roles and the active staff record's roles must both grant the role.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.actions import Actor, ActorType, AuditAction
from app.audit.service import append_entry
from app.clock import Clock
from app.errors import Conflict, Forbidden, InvalidInput, NotFound
from app.identity.principal import MissingRole, Principal, Role
from app.identity.staff.grant_endings import GrantEnder, GrantEnding
from app.identity.staff.models import STAFF_ROLES, Staff, StaffRole, Team, TeamManager
from app.identity.staff.schemas import StaffCreate, StaffUpdate, TeamCreate
from app.logs import get_logger

log = get_logger("voicelog.identity")


class StaffNotFound(NotFound):
    code = "staff_not_found"
    title = "No such staff member"


class StaffExists(Conflict):
    code = "staff_exists"
    title = "A staff member with this subject exists"


class TeamNotFound(NotFound):
    code = "team_not_found"
    title = "No such team"


class TeamExists(Conflict):
    code = "team_exists"
    title = "A team with this name exists"


class NotAManager(InvalidInput):
    code = "not_a_manager"
    title = "Only an active staff member with the manager role can manage a team"


class NotTeamManager(NotFound):
    code = "not_team_manager"
    title = "This person does not manage this team"


class NotAStaffRole(InvalidInput):
    code = "not_a_staff_role"
    title = "Staff records hold only the roles engineer, manager, auditor and admin"


class SelfAdministration(Forbidden):
    code = "self_administration"
    title = "Admins cannot change their own roles, team, team management or devices"


class UnknownStaff(Forbidden):
    code = "unknown_staff"
    title = "Your identity has no staff record"


class StaffInactive(Forbidden):
    code = "staff_inactive"
    title = "Your staff record is deactivated"


def refuse_self_administration(actor: Actor, subject: str) -> None:
    """An admin acting through their own token never changes their own record (separation of duties)."""
    if actor.type is ActorType.STAFF and actor.id == subject:
        raise SelfAdministration()


def _checked_roles(roles: Iterable[Role | str]) -> set[Role]:
    try:
        chosen = {Role(r) for r in roles}
    except ValueError:
        raise NotAStaffRole() from None
    if not chosen <= STAFF_ROLES:
        raise NotAStaffRole()
    return chosen


async def _audit_staff(session: AsyncSession, clock: Clock, actor: Actor, subject: str, change: str, *,
                       role: Role | None = None, team: str | None = None) -> None:
    await append_entry(session=session, clock=clock, actor=actor, action=AuditAction.STAFF_CHANGED,
                       detail={"staff": subject, "change": change, "role": role.value if role else None,
                               "team": team})


# --- teams --------------------------------------------------------------------------------------------


async def get_team(*, session: AsyncSession, team_id: str) -> Team | None:
    return await session.get(Team, team_id)


async def resolve_team(*, session: AsyncSession, ref: str) -> Team:
    """A team by id or by name."""
    team = await session.get(Team, ref)
    if team is None:
        team = (await session.execute(select(Team).where(Team.name == ref))).scalar_one_or_none()
    if team is None:
        raise TeamNotFound()
    return team


async def list_teams(*, session: AsyncSession) -> Sequence[Team]:
    return (await session.execute(select(Team).order_by(Team.name))).scalars().all()


async def create_team(*, session: AsyncSession, clock: Clock, actor: Actor, data: TeamCreate) -> Team:
    if _looks_like_uuid(data.name):
        raise InvalidInput("A team name cannot look like a team id.")
    if (await session.execute(select(Team.id).where(Team.name == data.name))).first() is not None:
        raise TeamExists()
    team = Team(name=data.name, created_at=clock.now(), manager_rows=[])
    session.add(team)
    await _flush_or_conflict(session, TeamExists())
    await append_entry(session=session, clock=clock, actor=actor, action=AuditAction.ADMIN_CHANGED,
                       detail={"setting": f"team:{team.id}", "change": "team_created"})
    for subject in dict.fromkeys(data.managers):
        await add_manager(session=session, clock=clock, actor=actor, team_id=team.id, subject=subject)
    return team


async def add_manager(*, session: AsyncSession, clock: Clock, actor: Actor, team_id: str, subject: str) -> Team:
    """Make an active staff member with the manager role a manager of the team (idempotent)."""
    refuse_self_administration(actor, subject)
    team = await resolve_team(session=session, ref=team_id)
    staff = await get_staff(session=session, subject=subject)
    if staff is None or not staff.holds(Role.MANAGER):
        raise NotAManager()
    if subject in team.managers:
        return team
    team.manager_rows.append(TeamManager(subject=subject, added_at=clock.now(), added_by=actor.id))
    await session.flush()
    await _audit_staff(session, clock, actor, subject, "manager_added", team=team.id)
    return team


async def remove_manager(*, session: AsyncSession, clock: Clock, actor: Actor, team_id: str,
                         subject: str) -> Team:
    """A team left without managers has nobody to approve its engineers' requests (they are denied)."""
    refuse_self_administration(actor, subject)
    team = await resolve_team(session=session, ref=team_id)
    row = next((r for r in team.manager_rows if r.subject == subject), None)
    if row is None:
        raise NotTeamManager()
    team.manager_rows.remove(row)
    await session.flush()
    await _audit_staff(session, clock, actor, subject, "manager_removed", team=team.id)
    return team


async def managers_of(*, session: AsyncSession, team_id: str) -> set[str]:
    """Subjects who may approve for this team now: listed managers whose record is active and a manager."""
    rows = await session.execute(
        select(TeamManager.subject)
        .join(Staff, Staff.subject == TeamManager.subject)
        .join(StaffRole, (StaffRole.subject == TeamManager.subject) & (StaffRole.role == Role.MANAGER.value))
        .where(TeamManager.team_id == team_id, Staff.active.is_(True))
    )
    return set(rows.scalars())


# --- staff --------------------------------------------------------------------------------------------


async def get_staff(*, session: AsyncSession, subject: str) -> Staff | None:
    """The staff record of an OIDC subject, active or not (callers check `active` / `holds()`)."""
    return await session.get(Staff, subject)


async def require_staff_record(*, session: AsyncSession, subject: str) -> Staff:
    staff = await get_staff(session=session, subject=subject)
    if staff is None:
        raise StaffNotFound()
    return staff


async def list_staff(*, session: AsyncSession, team_id: str | None = None,
                     include_inactive: bool = True) -> Sequence[Staff]:
    query = select(Staff).order_by(Staff.subject)
    if team_id is not None:
        query = query.where(Staff.team_id == team_id)
    if not include_inactive:
        query = query.where(Staff.active.is_(True))
    return (await session.execute(query)).scalars().all()


async def create_staff(*, session: AsyncSession, clock: Clock, actor: Actor, data: StaffCreate) -> Staff:
    refuse_self_administration(actor, data.subject)
    roles = _checked_roles(data.roles)
    if await get_staff(session=session, subject=data.subject) is not None:
        raise StaffExists()
    team = await resolve_team(session=session, ref=data.team) if data.team is not None else None
    now = clock.now()
    staff = Staff(subject=data.subject, display_name=data.display_name, team_id=team.id if team else None,
                  active=True, created_at=now, updated_at=now,
                  role_rows=[StaffRole(role=r.value) for r in sorted(roles)])
    session.add(staff)
    await _flush_or_conflict(session, StaffExists())
    await _audit_staff(session, clock, actor, staff.subject, "created", team=staff.team_id)
    for role in sorted(roles):
        await _audit_staff(session, clock, actor, staff.subject, "role_added", role=role)
    return staff


async def set_roles(*, session: AsyncSession, clock: Clock, actor: Actor, subject: str,
                    roles: Iterable[Role | str], grant_ender: GrantEnder) -> Staff:
    """Replace the person's roles; one audit entry per role added or removed, none if nothing changes. Losing
    `engineer` ends their grants (`grant_ender`; the caller tells the teams after its commit)."""
    refuse_self_administration(actor, subject)
    wanted = _checked_roles(roles)
    staff = await require_staff_record(session=session, subject=subject)
    current = staff.roles
    added, removed = sorted(wanted - current), sorted(current - wanted)
    if not added and not removed:
        return staff
    for row in [r for r in staff.role_rows if r.role in {x.value for x in removed}]:
        staff.role_rows.remove(row)
    staff.role_rows.extend(StaffRole(role=r.value) for r in added)
    staff.updated_at = clock.now()
    await session.flush()
    for role in added:
        await _audit_staff(session, clock, actor, subject, "role_added", role=role)
    for role in removed:
        await _audit_staff(session, clock, actor, subject, "role_removed", role=role)
    if Role.ENGINEER in removed:
        await grant_ender.end_grants_of(session=session, clock=clock, actor=actor, engineer=subject,
                                        reason=GrantEnding.ROLE_REMOVED)
    return staff


async def update_staff(*, session: AsyncSession, clock: Clock, actor: Actor, subject: str,
                       data: StaffUpdate, grant_ender: GrantEnder) -> Staff:
    """Display name and team; only the fields the caller set. A team change ends the person's grants."""
    refuse_self_administration(actor, subject)
    staff = await require_staff_record(session=session, subject=subject)
    changes: list[tuple[str, str | None]] = []
    if "display_name" in data.model_fields_set and data.display_name is not None \
            and data.display_name != staff.display_name:
        staff.display_name = data.display_name
        changes.append(("renamed", staff.team_id))
    if "team" in data.model_fields_set:
        team_id = (await resolve_team(session=session, ref=data.team)).id if data.team is not None else None
        if team_id != staff.team_id:
            staff.team_id = team_id
            changes.append(("team_changed" if team_id else "team_cleared", team_id))
    if not changes:
        return staff
    staff.updated_at = clock.now()
    await session.flush()
    for change, team in changes:
        await _audit_staff(session, clock, actor, subject, change, team=team)
    if any(change != "renamed" for change, _ in changes):
        # Their grants were approved by the old team's manager; a new team means a new approval (C5).
        await grant_ender.end_grants_of(session=session, clock=clock, actor=actor, engineer=subject,
                                        reason=GrantEnding.MOVED)
    return staff


async def set_active(*, session: AsyncSession, clock: Clock, actor: Actor, subject: str, active: bool,
                     grant_ender: GrantEnder) -> Staff:
    """Deactivate (or reactivate) a person: `require_staff` refuses them at once; their rows stay, their grants
    end."""
    refuse_self_administration(actor, subject)
    staff = await require_staff_record(session=session, subject=subject)
    if staff.active == active:
        return staff
    staff.active = active
    staff.updated_at = clock.now()
    await session.flush()
    await _audit_staff(session, clock, actor, subject, "reactivated" if active else "deactivated")
    if not active:
        await grant_ender.end_grants_of(session=session, clock=clock, actor=actor, engineer=subject,
                                        reason=GrantEnding.DEACTIVATED)
    log.info("identity.staff.active_changed", staff=subject, active=active)
    return staff


# --- the check behind require_staff ---------------------------------------------------------------------


@dataclass(frozen=True)
class StaffPrincipal:
    """A verified token and its person's active staff record; `roles` are those both of them grant."""

    principal: Principal
    staff: Staff
    roles: frozenset[Role]

    @property
    def subject(self) -> str:
        return self.principal.subject

    @property
    def team_id(self) -> str | None:
        return self.staff.team_id

    def has(self, role: Role) -> bool:
        return role in self.roles


async def authorize_staff(*, session: AsyncSession, principal: Principal, roles: Sequence[Role]) -> StaffPrincipal:
    """Defense in depth: the token must carry one of `roles`, and the active staff record must hold it too.

    A token alone (an issuer misconfiguration, a role assigned in Entra by mistake) is not enough, and a
    record alone (a stale token after a role was removed in Entra) is not enough either.
    """
    wanted = ", ".join(r.value for r in roles)
    if not any(principal.has(r) for r in roles):
        raise MissingRole(f"This needs one of the roles: {wanted}.")
    staff = await get_staff(session=session, subject=principal.subject)
    if staff is None:
        log.info("identity.staff.refused", reason="unknown_staff")
        raise UnknownStaff()
    if not staff.active:
        log.info("identity.staff.refused", reason="staff_inactive", staff=staff.subject)
        raise StaffInactive()
    effective = frozenset(r for r in staff.roles if principal.has(r))
    if not any(r in effective for r in roles):
        log.info("identity.staff.refused", reason="record_lacks_role", staff=staff.subject)
        raise MissingRole(f"Your staff record does not hold any of the roles: {wanted}.")
    return StaffPrincipal(principal=principal, staff=staff, roles=effective)


# --- internals ----------------------------------------------------------------------------------------


def _looks_like_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def _flush_or_conflict(session: AsyncSession, conflict: Conflict) -> None:
    """A concurrent insert of the same key loses with the domain's 409, not a 500."""
    try:
        await session.flush()
    except IntegrityError:
        raise conflict from None


async def teams_managed_by(*, session: AsyncSession, subject: str) -> list[str]:
    """The ids of the teams this person may approve for now (the access queue shows their requests): the
    same rule as `managers_of`, so a deactivated person or one without the manager role manages none."""
    rows = await session.execute(
        select(TeamManager.team_id)
        .join(Staff, Staff.subject == TeamManager.subject)
        .join(StaffRole, (StaffRole.subject == TeamManager.subject) & (StaffRole.role == Role.MANAGER.value))
        .where(TeamManager.subject == subject, Staff.active.is_(True))
        .order_by(TeamManager.team_id)
    )
    return list(rows.scalars())
