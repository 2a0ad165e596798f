"""The authenticated caller and role checks. Deny by default: no verifier configured, no access."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request

from app.errors import Forbidden, Unauthorized


class Role(StrEnum):
    ENGINEER = "engineer"
    MANAGER = "manager"
    AUDITOR = "auditor"
    ADMIN = "admin"
    CUSTOMER_ADMIN = "customer_admin"
    TICKETING = "ticketing"


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


async def authenticate(request: Request) -> Principal:
    """The caller's Principal from `Authorization: Bearer`; 401 when absent or invalid."""
    verifier: TokenVerifier | None = getattr(request.app.state.ctx, "token_verifier", None)
    if verifier is None:
        raise AuthenticationUnavailable()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Send an OIDC access token as `Authorization: Bearer <token>`.")
    return await verifier.verify(token.strip())


def require_role(*roles: Role) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """Dependency factory: the caller must hold at least one of `roles`."""

    async def dependency(request: Request) -> Principal:
        principal = await authenticate(request)
        if not any(principal.has(r) for r in roles):
            raise MissingRole(f"This needs one of the roles: {', '.join(r.value for r in roles)}.")
        return principal

    return dependency


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]
"""Any authenticated caller; use `Depends(require_role(...))` when a role is needed."""
