"""Token-only role checks at the HTTP edge: `require_role` on a small FastAPI app, tokens from the dev issuer.

`require_role` serves the roles of customers and services (`customer_admin`, `ticketing`); it refuses the
staff roles when a route is built, so they can only be checked by `require_staff` (token AND record, C5)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI

from app.errors import install_error_handlers
from app.identity.principal import STAFF_ROLES, CurrentPrincipal, Principal, Role, TokenVerifier, require_role
from app.identity.staff import models as staff_models
from tests.fixtures.identity import MintToken, bearer


def build_app(verifier: TokenVerifier | None) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.state.ctx = SimpleNamespace(token_verifier=verifier)

    @app.get("/tickets/probe")
    async def ticketing_only(who: Annotated[Principal, Depends(require_role(Role.TICKETING))]) -> dict[str, str]:
        return {"subject": who.subject}

    @app.get("/consents")
    async def ticketing_or_customer_admin(
        who: Annotated[Principal, Depends(require_role(Role.TICKETING, Role.CUSTOMER_ADMIN))],
    ) -> dict[str, str]:
        return {"subject": who.subject}

    @app.get("/me")
    async def me(who: CurrentPrincipal) -> dict[str, object]:
        return {"subject": who.subject, "roles": sorted(who.roles), "tenant": who.tenant}

    return app


@pytest.fixture
async def client(token_verifier: TokenVerifier) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(token_verifier))
    async with httpx.AsyncClient(transport=transport, base_url="http://voicelog.test") as c:
        yield c


@pytest.mark.parametrize("roles", [(r,) for r in sorted(STAFF_ROLES)] + [(Role.TICKETING, Role.ENGINEER), ()],
                         ids=[r.value for r in sorted(STAFF_ROLES)] + ["mixed", "none"])
def test_require_role_refuses_staff_roles_when_the_route_is_built(roles: tuple[Role, ...]) -> None:
    with pytest.raises(ValueError, match="require_staff" if roles else "one or more"):
        require_role(*roles)


def test_the_staff_roles_are_the_roles_a_staff_record_holds() -> None:
    assert STAFF_ROLES == staff_models.STAFF_ROLES
    assert set(Role) - STAFF_ROLES == {Role.CUSTOMER_ADMIN, Role.TICKETING}


async def test_ticketing_reaches_a_ticketing_route(client: httpx.AsyncClient, mint_token: MintToken) -> None:
    response = await client.get("/tickets/probe", headers=bearer(mint_token("svc", [Role.TICKETING])))

    assert response.status_code == 200
    assert response.json() == {"subject": "svc"}


async def test_any_of_several_roles_is_enough(client: httpx.AsyncClient, mint_token: MintToken) -> None:
    for role in (Role.TICKETING, Role.CUSTOMER_ADMIN):
        response = await client.get("/consents", headers=bearer(mint_token("carol", [role])))
        assert response.status_code == 200


async def test_missing_role_is_403(client: httpx.AsyncClient, mint_token: MintToken) -> None:
    token = mint_token("mike", [Role.MANAGER, Role.AUDITOR, Role.ENGINEER, Role.ADMIN, Role.CUSTOMER_ADMIN,
                                "ticketings"])

    response = await client.get("/tickets/probe", headers=bearer(token))

    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "missing_role"


async def test_authenticated_caller_without_roles(client: httpx.AsyncClient, mint_token: MintToken) -> None:
    response = await client.get("/me", headers=bearer(mint_token("cust", [Role.CUSTOMER_ADMIN], tenant="t9")))

    assert response.json() == {"subject": "cust", "roles": ["customer_admin"], "tenant": "t9"}


@pytest.mark.parametrize("headers", [{}, {"authorization": "Basic YWxpY2U6cHc="}, {"authorization": "Bearer "},
                                     {"authorization": "Bearer"}], ids=["none", "basic", "empty", "bare"])
async def test_missing_credentials_are_401(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await client.get("/tickets/probe", headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["code"] == "unauthorized"


async def test_invalid_token_is_a_401_problem_that_does_not_echo_it(
    client: httpx.AsyncClient, mint_token: MintToken
) -> None:
    token = mint_token("svc", [Role.TICKETING])
    head, body, signature = token.split(".")
    forged = f"{head}.{body}.{signature[:-4]}AAAA"

    response = await client.get("/tickets/probe", headers=bearer(forged))

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["code"] == "invalid_token"
    for part in (forged, head, body, signature[:-4]):
        assert part not in response.text


async def test_token_is_never_logged(
    client: httpx.AsyncClient, mint_token: MintToken, caplog: pytest.LogCaptureFixture
) -> None:
    good = mint_token("svc", [Role.TICKETING])
    bad = good[:-6] + "AAAAAA"
    await client.get("/tickets/probe", headers=bearer(good))
    await client.get("/tickets/probe", headers=bearer(bad))

    assert "identity.token.refused" in caplog.text
    assert good.split(".")[1] not in caplog.text
    assert good.split(".")[2][:20] not in caplog.text


async def test_no_verifier_configured_denies_everything(mint_token: MintToken) -> None:
    transport = httpx.ASGITransport(app=build_app(None))
    async with httpx.AsyncClient(transport=transport, base_url="http://voicelog.test") as c:
        response = await c.get("/me", headers=bearer(mint_token("alice", [Role.ADMIN])))

    assert response.status_code == 401
    assert response.json()["code"] == "authentication_unavailable"
