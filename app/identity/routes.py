"""The dev issuer's HTTP face: discovery, JWKS and a loopback-only token endpoint under `/dev/oidc`."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel, Field

from app.clock import Clock
from app.errors import Forbidden
from app.identity.dev_issuer import DevIssuer
from app.identity.loopback import names_this_machine
from app.identity.principal import Role
from app.identity.settings import DEV_ISSUER_PATH, IdentitySettings
from app.logs import get_logger

log = get_logger("voicelog.identity")


class DevTokenRequest(BaseModel):
    subject: str = Field(min_length=1, max_length=256, description="The `sub` of the token, e.g. `alice`.")
    roles: list[Role] = Field(default_factory=list, description="App roles the token carries.")
    tenant: str | None = Field(default=None, max_length=128, description="The `tid` (customer admins).")
    name: str | None = Field(default=None, max_length=256, description="Display name.")
    ttl_s: int = Field(default=3600, ge=60, le=86400, description="Lifetime in seconds.")


class DevTokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int


class DevTokenLoopbackOnly(Forbidden):
    code = "dev_token_loopback_only"
    title = "Dev tokens are handed out to loopback callers only"


_PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def _from_loopback(request: Request) -> bool:
    """A loopback peer that is not a local reverse proxy relaying someone else."""
    if any(h in request.headers for h in _PROXY_HEADERS):
        return False
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_dev_router(issuer: DevIssuer) -> APIRouter:
    """Routes of one dev issuer. Include them only when the dev issuer is enabled."""
    router = APIRouter(prefix=DEV_ISSUER_PATH, tags=["dev issuer"])
    no_store = {"cache-control": "no-store"}

    @router.get("/.well-known/openid-configuration", summary="Dev issuer OIDC discovery document")
    async def dev_discovery() -> dict[str, Any]:
        return issuer.discovery()

    @router.get("/jwks.json", summary="Dev issuer public signing keys")
    async def dev_jwks() -> dict[str, Any]:
        return issuer.jwks()

    @router.post("/token", summary="Mint a dev token (loopback callers only)", response_model=DevTokenResponse)
    async def dev_token(body: DevTokenRequest, request: Request, response: Response) -> DevTokenResponse:
        """Anyone who can call this is anyone they like: it answers loopback addresses only."""
        if not _from_loopback(request) or not names_this_machine(request.headers.get("host"), issuer.issuer):
            raise DevTokenLoopbackOnly("Use `voicelog dev token` on the machine running the service.")
        token = issuer.mint(body.subject, body.roles, body.tenant, timedelta(seconds=body.ttl_s), name=body.name)
        log.info("identity.dev_token.minted", roles=sorted(r.value for r in body.roles), ttl_s=body.ttl_s)
        response.headers.update(no_store)
        return DevTokenResponse(access_token=token, expires_in=body.ttl_s)

    return router


def load_dev_issuer(identity: IdentitySettings, data_dir: Path, *, clock: Clock | None = None) -> DevIssuer | None:
    """The dev issuer the settings describe, or None when it is off."""
    if not identity.dev_issuer_enabled:
        return None
    return DevIssuer.load_or_create(
        identity.dev_key_dir(data_dir), issuer=identity.dev_issuer_url, audience=identity.dev_audience, clock=clock
    )


def include_dev_routes(app: FastAPI, issuer: DevIssuer | None) -> bool:
    """Serve `/dev/oidc/*` on `app` when the dev issuer is enabled (`issuer`, the context's); returns whether it
    did."""
    if issuer is None:
        return False
    app.include_router(build_dev_router(issuer))
    log.warning("identity.dev_issuer.enabled", issuer=issuer.issuer, kid=issuer.kid)
    return True
