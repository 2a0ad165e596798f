"""Who a console user is to the access service: the token's role and the staff record's, both (as the API)."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy.ext.asyncio import AsyncSession

from app.access.context import AccessContext
from app.access.service import Person
from app.console.auth import MissingConsoleRole, console_staff
from app.identity.principal import Principal, Role


async def staff_person(session: AsyncSession, access: AccessContext, who: Principal, role: Role) -> Person:
    """The access service's view of the caller, after the API's one check (token AND active record hold `role`);
    its roles are those both grant, so no later decision counts a role the token or the record lacks."""
    staff = await console_staff(session, who, role)
    person = await access.directory.person(session, who.subject)
    if person is None:
        raise MissingConsoleRole("Your identity has no staff record.")
    return replace(person, roles=frozenset(r.value for r in staff.roles))
