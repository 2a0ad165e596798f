"""Who a console user is to the access service: the token's role and the staff record's, both (as the API)."""

from __future__ import annotations

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.routes import AccessContext
from app.access.service import Person
from app.console.auth import MissingConsoleRole
from app.identity.principal import Principal, Role


def access_context(request: Request) -> AccessContext:
    ctx: AccessContext = request.app.state.access
    return ctx


async def staff_person(session: AsyncSession, request: Request, who: Principal, role: Role) -> Person:
    """The same defense in depth as the access API: an active staff record holding `role`, and the token's role."""
    person = await access_context(request).directory.person(session, who.subject)
    if person is None or not person.active or role.value not in person.roles or not who.has(role):
        raise MissingConsoleRole(f"This needs an active staff record with the {role.value} role.")
    return person
