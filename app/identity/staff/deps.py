"""FastAPI dependencies: `require_staff(*roles)` and the admin check that takes a token or a staff admin."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.actions import Actor
from app.context import AppContext
from app.deps import AdminDisabled, ContextDep, SessionDep
from app.errors import Unauthorized
from app.identity.principal import Role, authenticate
from app.identity.staff.grant_endings import GrantEnder
from app.identity.staff.models import STAFF_ROLES
from app.identity.staff.service import StaffPrincipal, authorize_staff

ADMIN_TOKEN_ACTOR = Actor.service("admin-token")


def check_staff(*roles: Role) -> Callable[[Request, AppContext, AsyncSession], Coroutine[Any, Any, StaffPrincipal]]:
    """The token-AND-record check for `roles`, as a plain function: `require_staff` wraps it for FastAPI, and
    the context carries `check_staff(Role.AUDITOR)` for audit's routes (`app.audit.auditors`)."""
    if not roles or not set(roles) <= STAFF_ROLES:
        raise ValueError("require_staff takes one or more of: engineer, manager, auditor, admin")

    async def check(request: Request, ctx: AppContext, session: AsyncSession) -> StaffPrincipal:
        principal = await authenticate(request, ctx)
        return await authorize_staff(session=session, principal=principal, roles=roles)

    return check


def require_staff(*roles: Role) -> Callable[..., Coroutine[Any, Any, StaffPrincipal]]:
    """Dependency factory: a valid token with one of `roles`, whose person's active staff record holds it too."""
    check = check_staff(*roles)

    async def dependency(request: Request, ctx: ContextDep, session: SessionDep) -> StaffPrincipal:
        return await check(request, ctx, session)

    return dependency


StaffEngineer = Annotated[StaffPrincipal, Depends(require_staff(Role.ENGINEER))]
StaffManager = Annotated[StaffPrincipal, Depends(require_staff(Role.MANAGER))]
StaffAuditor = Annotated[StaffPrincipal, Depends(require_staff(Role.AUDITOR))]
StaffAdmin = Annotated[StaffPrincipal, Depends(require_staff(Role.ADMIN))]


@dataclass(frozen=True)
class AdminCaller:
    """Who is administering: the configured admin token (bootstrap, automation) or a staff admin."""

    actor: Actor
    staff: StaffPrincipal | None = None


async def require_admin_caller(request: Request, ctx: ContextDep, session: SessionDep) -> AdminCaller:
    """The admin token (`VOICELOG_ADMIN_TOKEN`, constant-time compare) or an OIDC token of a staff admin.

    A bearer value equal to the admin token is the admin token; anything else must verify as an OIDC
    token that carries `admin` and whose person's active staff record holds `admin`.
    """
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized("Send the admin token or a staff admin's token as `Authorization: Bearer <token>`.")
    if ctx.admin_token is not None and hmac.compare_digest(presented.encode(), ctx.admin_token.encode()):
        return AdminCaller(actor=ADMIN_TOKEN_ACTOR)
    if ctx.token_verifier is None:
        if ctx.admin_token is None:
            raise AdminDisabled("Set VOICELOG_ADMIN_TOKEN or configure an identity issuer.")
        raise Unauthorized("The admin token is not valid.")
    principal = await authenticate(request, ctx)
    staff = await authorize_staff(session=session, principal=principal, roles=(Role.ADMIN,))
    return AdminCaller(actor=Actor.staff(staff.subject), staff=staff)


AdminCallerDep = Annotated[AdminCaller, Depends(require_admin_caller)]
"""For `/admin/*` routes that staff admins may use as well as the admin token."""


def get_grant_ender(ctx: ContextDep) -> GrantEnder:
    """The context's grant ender (access's, put there by `build_context`): identity never imports access."""
    return ctx.grant_ender


GrantEnderDep = Annotated[GrantEnder, Depends(get_grant_ender)]
"""For routes whose change ends grants (a staff change, an unassignment): end them, then `notify_ended`."""
