"""Who a console user is to the access service: the token's role and the staff record's, both (as the API)."""

from __future__ import annotations

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.context import AccessContext
from app.access.service import NotStaff, Person, require_person
from app.console.auth import MissingConsoleRole
from app.identity.principal import Principal, Role


def access_context(request: Request) -> AccessContext:
    ctx: AccessContext = request.app.state.access
    return ctx


async def staff_person(session: AsyncSession, request: Request, who: Principal, role: Role) -> Person:
    """The same defense in depth as the access API: an active staff record holding `role`, and the token's role."""
    try:
        return await require_person(session=session, directory=access_context(request).directory,
                                    subject=who.subject, token_roles=frozenset(r.value for r in who.roles),
                                    role=role.value)
    except NotStaff as refused:
        raise MissingConsoleRole(refused.detail) from refused
