"""Who a console user is to the access service: the API's one check (`acting_person`), refused as the console's."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.access.context import AccessContext
from app.access.people import acting_person
from app.access.service import NotStaff, Person
from app.console.auth import MissingConsoleRole
from app.identity.principal import MissingRole, Principal, Role
from app.identity.staff.service import StaffInactive, UnknownStaff


async def staff_person(session: AsyncSession, access: AccessContext, actor: Principal, role: Role) -> Person:
    """The access service's view of the caller (token AND active record hold `role`), as the API asks it."""
    try:
        return await acting_person(session=session, directory=access.directory, actor=actor, roles=(role,))
    except NotStaff as refused:
        raise MissingConsoleRole("Your identity has no staff record.") from refused
    except (MissingRole, UnknownStaff, StaffInactive) as refused:
        raise MissingConsoleRole(refused.detail) from refused
