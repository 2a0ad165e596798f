"""The authenticated caller and role checks. Deny by default: no verifier configured, no access."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request

from app.context import AppContext, ContextDep
from app.errors import Forbidden, Unauthorized


class Role(StrEnum):
    ENGINEER = "engineer"
    MANAGER = "manager"
    AUDITOR = "auditor"
    ADMIN = "admin"
    CUSTOMER_ADMIN = "customer_admin"
    TICKETING = "ticketing"


STAFF_ROLES = frozenset({Role.ENGINEER, Role.MANAGER, Role.AUDITOR, Role.ADMIN})
"""Roles that count only when the person's active staff record holds them too (C5: token AND record).
`customer_admin` and `ticketing` are token roles of customers and services, who have no staff record."""


@dataclass(frozen=True)
class Principal:
    """A verified identity: OIDC subject, roles from the token, tenant for customer admins."""

    subject: str
    roles: frozenset[Role]
    tenant: str | None = None
    name: str | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def has(self, role: Role) -> bool:
        return role in self.roles


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Principal:
        """Verify a bearer token (signature, algorithm allowlist, issuer, audience, time) or raise."""
        ...


class MissingRole(Forbidden):
    code = "missing_role"
    title = "Your identity does not have the role this needs"


class AuthenticationUnavailable(Unauthorized):
    code = "authentication_unavailable"
    title = "No identity issuer is configured"


async def authenticate(request: Request, ctx: ContextDep) -> Principal:
    """The caller's Principal from `Authorization: Bearer`; 401 when absent or invalid."""
    verifier = ctx.token_verifier
    if verifier is None:
        raise AuthenticationUnavailable()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Send an OIDC access token as `Authorization: Bearer <token>`.")
    return await verifier.verify(token.strip())


def require_role(*roles: Role) -> Callable[[Request, AppContext], Coroutine[Any, Any, Principal]]:
    """Dependency factory for token-only roles (`customer_admin`, `ticketing`): the token holds one of `roles`.

    A staff role is refused here, when the route is built: it needs the staff record too, so it goes through
    `app.identity.staff.deps.require_staff` (the one token-AND-record check), never the token alone.
    """
    if not roles:
        raise ValueError("require_role takes one or more roles")
    staff = sorted(r.value for r in roles if r in STAFF_ROLES)
    if staff:
        raise ValueError(f"require_role cannot check the staff role(s) {', '.join(staff)} from the token alone: "
                         "use app.identity.staff.deps.require_staff (token AND active staff record)")

    async def dependency(request: Request, ctx: ContextDep) -> Principal:
        principal = await authenticate(request, ctx)
        if not any(principal.has(r) for r in roles):
            raise MissingRole(f"This needs one of the roles: {', '.join(r.value for r in roles)}.")
        return principal

    return dependency


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]
"""Any authenticated caller; a staff role needs `require_staff`, a token-only role `require_role`."""
