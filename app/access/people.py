"""Adapters from the identity and SAW registries to what the access service and read policy need."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy.ext.asyncio import AsyncSession

from app.access.policy import SawView
from app.access.saw.trust import saw_of_fingerprint
from app.access.service import NotStaff, Person, StaffDirectory
from app.identity.principal import Principal, Role
from app.identity.staff.service import authorize_staff, get_staff, managers_of, teams_managed_by


async def acting_person(*, session: AsyncSession, directory: StaffDirectory, actor: Principal,
                        roles: tuple[Role, ...]) -> Person:
    """The one role check (`authorize_staff`: token AND active staff record hold one of `roles`, C5), then the
    access view of the person with only the roles both grant, so no decision counts a role one of them lacks.
    The API and the console both ask this; each shows the refusal its own way."""
    staff = await authorize_staff(session=session, principal=actor, roles=roles)
    person = await directory.person(session, actor.subject)
    if person is None:
        raise NotStaff()
    return replace(person, roles=frozenset(r.value for r in staff.roles))


class StaffRecords:
    """StaffDirectory over the staff and team tables of app/identity/staff."""

    async def person(self, session: AsyncSession, subject: str) -> Person | None:
        staff = await get_staff(session=session, subject=subject)
        if staff is None:
            return None
        return Person(subject=staff.subject, team_id=staff.team_id, active=staff.active,
                      roles=frozenset(role.value for role in staff.roles))

    async def managers(self, session: AsyncSession, team_id: str) -> set[str]:
        return await managers_of(session=session, team_id=team_id)

    async def teams_managed(self, session: AsyncSession, subject: str) -> list[str]:
        return await teams_managed_by(session=session, subject=subject)


class SawRegistry:
    """SawLookup over app/access/saw: the SAW of the mutual-TLS fingerprint a trusted proxy reported (resolved
    by the route, `saw_fingerprint`), registered, unrevoked."""

    async def saw_for(self, session: AsyncSession, fingerprint: str | None, owner_subject: str) -> SawView | None:
        saw = await saw_of_fingerprint(session=session, fingerprint=fingerprint, owner_subject=owner_subject)
        if saw is None:
            return None
        return SawView(id=saw.id, owner_subject=saw.owner_subject, revoked=saw.revoked)
