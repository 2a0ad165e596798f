"""Round-2 probes of opting in by ticket (issue 19's consent changes): a customer admin names the ticket by
its reference or ID; another tenant's ticket (or another resource's) is answered exactly as a ticket that does
not exist, so nothing is learnt of tickets the customer cannot see, and no consent is made. `recording_from`
is on the answer only while the consent can record. SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI

from app.clock import SystemClock
from app.identity.principal import Role
from app.identity.settings import IdentitySettings
from app.main import create_app
from app.resources.schemas import ResourceCreate
from app.resources.service import add_resource
from app.wiring import close_context
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.saw import app_settings


@dataclass
class World:
    app: FastAPI
    client: httpx.AsyncClient
    tag: str
    admins: dict[str, dict[str, str]]  # tenant letter -> customer admin headers
    tickets: dict[str, dict[str, Any]]  # resource letter -> its ticket

    def resource(self, letter: str) -> str:
        return f"res-{letter}-{self.tag}"

    async def consent(self, admin: str, resource: str, body: dict[str, Any]) -> httpx.Response:
        return await self.client.post(f"/customer/resources/{self.resource(resource)}/consents",
                                      headers=self.admins[admin], json=body)

    async def consents(self, admin: str, resource: str) -> list[dict[str, Any]]:
        response = await self.client.get(f"/customer/resources/{self.resource(resource)}/consents",
                                         headers=self.admins[admin])
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()
        return found


@pytest.fixture
async def world(app_db_url: str, tmp_path: Path, identity_settings: IdentitySettings,
                mint_token: MintToken) -> AsyncIterator[World]:
    """Tenant A owns resources a and a2, tenant B owns b; each resource has one open ticket."""
    app: FastAPI = create_app(app_settings(tmp_path, app_db_url, identity=identity_settings))
    tag = uuid4().hex[:8]
    ctx = app.state.ctx
    owners = {"a": "A", "a2": "A", "b": "B"}
    async with ctx.session_factory() as session:
        for letter, tenant in owners.items():
            await add_resource(session=session, clock=SystemClock(), regions=ctx.settings.region_names,
                               data=ResourceCreate(name=f"res-{letter}-{tag}", region=ctx.settings.region_names[0],
                                                   upstream_endpoint="wss://upstream.example",
                                                   owner_tenant=f"tenant-{tenant}-{tag}"))
        await session.commit()
    ticketing = bearer(mint_token("svc-ticketing", [Role.TICKETING]))
    admins = {t: bearer(mint_token(f"admin-{t}-{tag}", [Role.CUSTOMER_ADMIN], tenant=f"tenant-{t}-{tag}"))
              for t in ("A", "B")}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                 base_url="http://voicelog.test") as client:
        tickets = {}
        for letter in owners:
            response = await client.post("/tickets", headers=ticketing, json={
                "resource": f"res-{letter}-{tag}", "external_ref": f"INC-{letter.upper()}-{tag}"})
            assert response.status_code == 201, response.text
            tickets[letter] = response.json()
        yield World(app, client, tag, admins, tickets)
    await close_context(ctx)


def _shape(response: httpx.Response, *secrets: str) -> tuple[int, dict[str, Any]]:
    """The answer with the caller's own input and the per-request instance taken out."""
    body = response.json()
    body.pop("instance", None)
    text = repr(body)
    for secret in secrets:
        text = text.replace(secret, "<ref>")
    return response.status_code, {"text": text}


async def test_another_tenants_ticket_reference_is_answered_as_no_such_ticket(world: World) -> None:
    theirs = world.tickets["a"]["external_ref"]
    never = f"INC-NONE-{world.tag}"
    foreign = await world.consent("B", "b", {"ticket_ref": theirs})
    missing = await world.consent("B", "b", {"ticket_ref": never})
    assert foreign.status_code == 404, foreign.text
    assert _shape(foreign, theirs) == _shape(missing, never)
    same_tenant_other_resource = await world.consent("A", "a2", {"ticket_ref": theirs})
    assert _shape(same_tenant_other_resource, theirs) == _shape(missing, never)
    assert await world.consents("B", "b") == []
    assert await world.consents("A", "a2") == []
    # and its own reference works: the probe can tell a refusal from a broken opt-in
    own = await world.consent("B", "b", {"ticket_ref": world.tickets["b"]["external_ref"]})
    assert own.status_code == 201, own.text


async def test_another_tenants_ticket_id_is_answered_as_no_such_ticket(world: World) -> None:
    never = str(uuid4())
    foreign = await world.consent("B", "b", {"ticket_id": world.tickets["a"]["id"]})
    missing = await world.consent("B", "b", {"ticket_id": never})
    assert foreign.status_code == missing.status_code == 404, (foreign.text, missing.text)
    assert _shape(foreign, world.tickets["a"]["id"]) == _shape(missing, never)
    assert await world.consents("B", "b") == []


async def test_another_tenants_resource_is_not_found_whatever_the_ticket(world: World) -> None:
    for body in ({"ticket_ref": world.tickets["a"]["external_ref"]}, {"ticket_id": world.tickets["a"]["id"]}):
        response = await world.consent("B", "a", body)
        assert response.status_code == 404, response.text
        unknown = await world.client.post(f"/customer/resources/no-such-{world.tag}/consents",
                                          headers=world.admins["B"], json=body)
        assert _shape(response, world.resource("a")) == _shape(unknown, f"no-such-{world.tag}")
    assert await world.consents("A", "a") == []


async def test_recording_from_is_given_only_while_the_consent_can_record(world: World) -> None:
    made = await world.consent("A", "a", {"ticket_ref": world.tickets["a"]["external_ref"], "days": 1})
    assert made.status_code == 201, made.text
    consent = made.json()
    assert consent["state"] == "active"
    not_before = datetime.fromisoformat(consent["not_before"].replace("Z", "+00:00"))
    recording_from = datetime.fromisoformat(consent["recording_from"].replace("Z", "+00:00"))
    refresh = world.app.state.ctx.settings.consent_refresh_s
    assert not_before < recording_from
    assert (recording_from - not_before).total_seconds() >= refresh  # never earlier than other replicas reload
    withdrawn = await world.client.post(
        f"/customer/resources/{world.resource('a')}/consents/{consent['id']}/withdraw", headers=world.admins["A"])
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["recording_from"] is None
    assert [c["recording_from"] for c in await world.consents("A", "a")] == [None]
    # tenant B cannot withdraw or even see A's consent through its own resource
    other = await world.client.post(
        f"/customer/resources/{world.resource('b')}/consents/{consent['id']}/withdraw", headers=world.admins["B"])
    assert other.status_code == 404
