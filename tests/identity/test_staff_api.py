"""The staff and team admin API (admin token or staff admin) and `require_staff` at the HTTP edge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI

from app.identity.principal import Role
from app.identity.settings import IdentitySettings
from app.identity.staff.deps import StaffEngineer, require_staff
from app.main import create_app
from app.wiring import close_context
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.relay import TEST_ADMIN_TOKEN
from tests.fixtures.saw import app_settings, audit_records, include_staff_and_saw_routes

ADMIN = bearer(TEST_ADMIN_TOKEN)


@dataclass
class Api:
    client: httpx.AsyncClient
    app: FastAPI
    mint: MintToken
    tag: str

    def who(self, name: str) -> str:
        return f"{name}-{self.tag}"

    def token(self, name: str, *roles: Role) -> dict[str, str]:
        return bearer(self.mint(self.who(name), roles))

    async def add(self, name: str, *roles: Role, team: str | None = None) -> dict[str, Any]:
        response = await self.client.post("/admin/staff", headers=ADMIN, json={
            "subject": self.who(name), "display_name": name.title(), "team": team, "roles": list(roles)})
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def audited(self, *ids: str) -> list[Any]:
        """Entries about this test's people (their subjects carry the tag) or naming one of `ids`."""
        async with self.app.state.ctx.session_factory() as session:
            return [r for r in await audit_records(session)
                    if any(key in str(r.detail) or key in r.actor for key in (self.tag, *ids))]


@pytest.fixture
async def api(app_db_url: str, tmp_path: Path, identity_settings: IdentitySettings,
              mint_token: MintToken) -> AsyncIterator[Api]:
    app = include_staff_and_saw_routes(create_app(app_settings(tmp_path, app_db_url, identity=identity_settings)))

    @app.get("/probe/engineer")
    async def engineer_probe(me: StaffEngineer) -> dict[str, object]:
        return {"subject": me.subject, "roles": sorted(me.roles), "team": me.team_id}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield Api(client, app, mint_token, uuid4().hex[:8])
    await close_context(app.state.ctx)


async def test_admin_token_manages_teams_and_staff_and_every_change_is_audited(api: Api) -> None:
    team = (await api.client.post("/admin/teams", headers=ADMIN, json={"name": api.who("voice")})).json()
    await api.add("mona", Role.MANAGER, team=team["name"])
    alice = await api.add("alice", Role.ENGINEER, team=team["id"])
    managed = await api.client.post(f"/admin/teams/{team['id']}/managers", headers=ADMIN,
                                    json={"subject": api.who("mona")})
    roles = await api.client.put(f"/admin/staff/{api.who('alice')}/roles", headers=ADMIN,
                                 json={"roles": ["engineer", "auditor"]})
    off = await api.client.post(f"/admin/staff/{api.who('alice')}/deactivate", headers=ADMIN)

    assert alice["team_id"] == team["id"]
    assert alice["roles"] == ["engineer"]
    assert managed.json()["managers"] == [api.who("mona")]
    assert roles.json()["roles"] == ["auditor", "engineer"]
    assert off.json()["active"] is False
    listed = await api.client.get("/admin/staff", headers=ADMIN, params={"team": team["name"], "active_only": True})
    assert [s["subject"] for s in listed.json()] == [api.who("mona")]
    changes = [(r.action, r.detail.get("change")) for r in await api.audited(team["id"])]
    assert changes == [
        ("admin.changed", "team_created"),
        ("staff.changed", "created"), ("staff.changed", "role_added"),
        ("staff.changed", "created"), ("staff.changed", "role_added"),
        ("staff.changed", "manager_added"),
        ("staff.changed", "role_added"),
        ("staff.changed", "deactivated"),
    ]
    assert {r.actor for r in await api.audited(team["id"])} == {"service:admin-token"}


async def test_a_staff_admin_may_administer_and_is_the_audited_actor(api: Api) -> None:
    await api.add("root", Role.ADMIN)
    admin = api.token("root", Role.ADMIN)

    created = await api.client.post("/admin/staff", headers=admin, json={
        "subject": api.who("bob"), "display_name": "Bob", "roles": ["engineer"]})
    shown = await api.client.get(f"/admin/staff/{api.who('bob')}", headers=admin)

    assert created.status_code == 201, created.text
    assert shown.json()["roles"] == ["engineer"]
    actors = [r.actor for r in await api.audited() if r.detail.get("staff") == api.who("bob")]
    assert actors == [f"staff:{api.who('root')}"] * 2


async def test_a_staff_admin_cannot_change_their_own_record(api: Api) -> None:
    await api.add("root", Role.ADMIN)
    admin = api.token("root", Role.ADMIN, Role.ENGINEER)

    response = await api.client.put(f"/admin/staff/{api.who('root')}/roles", headers=admin,
                                    json={"roles": ["admin", "engineer"]})

    assert (response.status_code, response.json()["code"]) == (403, "self_administration")


@pytest.mark.parametrize(("token_roles", "record_roles", "code"), [
    ([Role.ENGINEER], [Role.ENGINEER, Role.ADMIN], "missing_role"),  # the token lacks admin
    ([Role.ADMIN], [Role.ENGINEER], "missing_role"),  # the record lacks admin
    ([Role.ADMIN], None, "unknown_staff"),  # no record at all
], ids=["token-lacks-role", "record-lacks-role", "no-record"])
async def test_the_admin_api_refuses_whoever_is_not_an_admin_in_token_and_record(
    api: Api, token_roles: list[Role], record_roles: list[Role] | None, code: str
) -> None:
    if record_roles is not None:
        await api.add("pat", *record_roles)

    response = await api.client.get("/admin/staff", headers=api.token("pat", *token_roles))

    assert (response.status_code, response.json()["code"]) == (403, code)


async def test_the_admin_api_needs_credentials(api: Api) -> None:
    none = await api.client.get("/admin/teams")
    wrong = await api.client.get("/admin/teams", headers=bearer("not-the-admin-token"))

    assert (none.status_code, none.json()["code"]) == (401, "unauthorized")
    assert (wrong.status_code, wrong.json()["code"]) == (401, "invalid_token")
    assert "not-the-admin-token" not in wrong.text


async def test_staff_records_refuse_roles_that_are_not_staff_roles(api: Api) -> None:
    response = await api.client.post("/admin/staff", headers=ADMIN, json={
        "subject": api.who("cust"), "display_name": "C", "roles": ["customer_admin"]})

    assert (response.status_code, response.json()["code"]) == (422, "invalid_input")


async def test_unknown_team_and_person_are_404(api: Api) -> None:
    team = await api.client.post("/admin/staff", headers=ADMIN, json={
        "subject": api.who("x"), "display_name": "X", "team": "no-such-team"})
    person = await api.client.get(f"/admin/staff/{api.who('nobody')}", headers=ADMIN)

    assert (team.status_code, team.json()["code"]) == (404, "team_not_found")
    assert (person.status_code, person.json()["code"]) == (404, "staff_not_found")


# --- require_staff -----------------------------------------------------------------------------------------


async def test_require_staff_admits_a_token_and_active_record_that_both_hold_the_role(api: Api) -> None:
    await api.add("eng", Role.ENGINEER, Role.AUDITOR)

    response = await api.client.get("/probe/engineer", headers=api.token("eng", Role.ENGINEER, Role.MANAGER))

    assert response.status_code == 200
    assert response.json() == {"subject": api.who("eng"), "roles": ["engineer"], "team": None}


async def test_require_staff_refuses_a_token_without_the_role(api: Api) -> None:
    await api.add("eng", Role.ENGINEER)

    response = await api.client.get("/probe/engineer", headers=api.token("eng", Role.MANAGER))

    assert (response.status_code, response.json()["code"]) == (403, "missing_role")


async def test_require_staff_refuses_when_the_staff_record_lacks_the_role(api: Api) -> None:
    await api.add("eng", Role.MANAGER)

    response = await api.client.get("/probe/engineer", headers=api.token("eng", Role.ENGINEER))

    assert (response.status_code, response.json()["code"]) == (403, "missing_role")
    assert "staff record" in response.json()["detail"]


async def test_require_staff_refuses_without_a_staff_record(api: Api) -> None:
    response = await api.client.get("/probe/engineer", headers=api.token("ghost", Role.ENGINEER))

    assert (response.status_code, response.json()["code"]) == (403, "unknown_staff")


async def test_deactivating_refuses_the_same_token_at_once(api: Api) -> None:
    await api.add("eng", Role.ENGINEER)
    token = api.token("eng", Role.ENGINEER)
    assert (await api.client.get("/probe/engineer", headers=token)).status_code == 200

    await api.client.post(f"/admin/staff/{api.who('eng')}/deactivate", headers=ADMIN)
    response = await api.client.get("/probe/engineer", headers=token)

    assert (response.status_code, response.json()["code"]) == (403, "staff_inactive")


async def test_require_staff_needs_a_valid_token(api: Api) -> None:
    await api.add("eng", Role.ENGINEER)
    forged = api.token("eng", Role.ENGINEER)["authorization"][:-6] + "AAAAAA"

    missing = await api.client.get("/probe/engineer")
    invalid = await api.client.get("/probe/engineer", headers={"authorization": forged})

    assert missing.status_code == 401
    assert (invalid.status_code, invalid.json()["code"]) == (401, "invalid_token")


def test_require_staff_takes_only_staff_roles() -> None:
    with pytest.raises(ValueError, match="engineer"):
        require_staff()
    with pytest.raises(ValueError, match="engineer"):
        require_staff(Role.CUSTOMER_ADMIN)
