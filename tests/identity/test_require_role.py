"""Role checks at the HTTP edge: `require_role` on a small FastAPI app, tokens from the dev issuer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI

from app.errors import install_error_handlers
from app.identity.principal import CurrentPrincipal, Principal, Role, TokenVerifier, require_role
from tests.fixtures.identity import MintToken, bearer


def build_app(verifier: TokenVerifier | None) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.state.ctx = SimpleNamespace(token_verifier=verifier)

    @app.get("/recordings/probe")
    async def engineer_only(who: Annotated[Principal, Depends(require_role(Role.ENGINEER))]) -> dict[str, str]:
        return {"subject": who.subject}

    @app.get("/reviews")
    async def auditor_or_admin(
        who: Annotated[Principal, Depends(require_role(Role.AUDITOR, Role.ADMIN))],
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


async def test_engineer_reaches_an_engineer_route(client: httpx.AsyncClient, mint_token: MintToken) -> None:
    response = await client.get("/recordings/probe", headers=bearer(mint_token("alice", [Role.ENGINEER])))

    assert response.status_code == 200
    assert response.json() == {"subject": "alice"}


async def test_any_of_several_roles_is_enough(client: httpx.AsyncClient, mint_token: MintToken) -> None:
    for role in (Role.AUDITOR, Role.ADMIN):
        response = await client.get("/reviews", headers=bearer(mint_token("carol", [role])))
        assert response.status_code == 200


async def test_missing_role_is_403(client: httpx.AsyncClient, mint_token: MintToken) -> None:
    token = mint_token("mike", [Role.MANAGER, Role.AUDITOR, Role.CUSTOMER_ADMIN, "engineers"])

    response = await client.get("/recordings/probe", headers=bearer(token))

    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "missing_role"


async def test_authenticated_caller_without_roles(client: httpx.AsyncClient, mint_token: MintToken) -> None:
    response = await client.get("/me", headers=bearer(mint_token("cust", [Role.CUSTOMER_ADMIN], tenant="t9")))

    assert response.json() == {"subject": "cust", "roles": ["customer_admin"], "tenant": "t9"}


@pytest.mark.parametrize("headers", [{}, {"authorization": "Basic YWxpY2U6cHc="}, {"authorization": "Bearer "},
                                     {"authorization": "Bearer"}], ids=["none", "basic", "empty", "bare"])
async def test_missing_credentials_are_401(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await client.get("/recordings/probe", headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["code"] == "unauthorized"


async def test_invalid_token_is_a_401_problem_that_does_not_echo_it(
    client: httpx.AsyncClient, mint_token: MintToken
) -> None:
    token = mint_token("alice", [Role.ENGINEER])
    head, body, signature = token.split(".")
    forged = f"{head}.{body}.{signature[:-4]}AAAA"

    response = await client.get("/recordings/probe", headers=bearer(forged))

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["code"] == "invalid_token"
    for part in (forged, head, body, signature[:-4]):
        assert part not in response.text


async def test_token_is_never_logged(
    client: httpx.AsyncClient, mint_token: MintToken, caplog: pytest.LogCaptureFixture
) -> None:
    good = mint_token("alice", [Role.ENGINEER])
    bad = good[:-6] + "AAAAAA"
    await client.get("/recordings/probe", headers=bearer(good))
    await client.get("/recordings/probe", headers=bearer(bad))

    assert "identity.token.refused" in caplog.text
    assert good.split(".")[1] not in caplog.text
    assert good.split(".")[2][:20] not in caplog.text


async def test_no_verifier_configured_denies_everything(mint_token: MintToken) -> None:
    transport = httpx.ASGITransport(app=build_app(None))
    async with httpx.AsyncClient(transport=transport, base_url="http://voicelog.test") as c:
        response = await c.get("/me", headers=bearer(mint_token("alice", [Role.ADMIN])))

    assert response.status_code == 401
    assert response.json()["code"] == "authentication_unavailable"
