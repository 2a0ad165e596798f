"""The SAW registry (admin) and `/access/saw/me`: registered, unrevoked, bound to the caller, via the proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI

from app.access.saw.settings import SawSettings
from app.identity.principal import Role
from app.identity.settings import IdentitySettings
from app.main import create_app
from app.wiring import close_context
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.relay import TEST_ADMIN_TOKEN
from tests.fixtures.saw import Issued, app_settings, audit_records, include_staff_and_saw_routes

ADMIN = bearer(TEST_ADMIN_TOKEN)


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient
    mint: MintToken
    tag: str
    device: Callable[[str], Issued]

    def who(self, name: str) -> str:
        return f"{name}-{self.tag}"

    def engineer(self, name: str) -> dict[str, str]:
        return bearer(self.mint(self.who(name), [Role.ENGINEER]))

    async def add(self, name: str, *roles: Role) -> None:
        response = await self.client.post("/admin/staff", headers=ADMIN, json={
            "subject": self.who(name), "display_name": name, "roles": list(roles)})
        assert response.status_code == 201, response.text

    async def register(self, owner: str, device: Issued, headers: dict[str, str] = ADMIN,
                       **body: Any) -> httpx.Response:
        payload = {"owner": self.who(owner), "label": f"SAW-{self.tag}", "cert_pem": device.pem, **body}
        return await self.client.post("/admin/saws", headers=headers, json=payload)

    async def me(self, name: str, device: Issued | None, client: httpx.AsyncClient | None = None) -> httpx.Response:
        headers = {**self.engineer(name), **(device.headers if device else {})}
        return await (client or self.client).get("/access/saw/me", headers=headers)


def build_app(app_db_url: str, tmp_path: Path, identity: IdentitySettings, saw: SawSettings) -> FastAPI:
    return include_staff_and_saw_routes(create_app(app_settings(tmp_path, app_db_url, identity=identity, saw=saw)))


@pytest.fixture
async def api(app_db_url: str, tmp_path: Path, identity_settings: IdentitySettings, mint_token: MintToken,
              saw_loopback_settings: SawSettings, saw_device: Callable[[str], Issued]) -> AsyncIterator[Api]:
    app = build_app(app_db_url, tmp_path, identity_settings, saw_loopback_settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield Api(app, client, mint_token, uuid4().hex[:8], saw_device)
    await close_context(app.state.ctx)


async def test_registering_binds_a_certificate_to_a_person_and_is_audited(api: Api) -> None:
    await api.add("alice", Role.ENGINEER)
    device = api.device("alice-laptop")

    response = await api.register("alice", device)

    assert response.status_code == 201, response.text
    saw = response.json()
    assert (saw["cert_sha256"], saw["owner_subject"], saw["registered_by"]) == (device.sha256, api.who("alice"),
                                                                                "admin-token")
    assert saw["revoked_at"] is None
    async with api.app.state.ctx.session_factory() as session:
        entries = [r for r in await audit_records(session) if r.saw == saw["id"]]
    assert [(e.action, e.actor, e.detail) for e in entries] == [
        ("saw.registered", "service:admin-token", {"owner": api.who("alice"), "device": f"SAW-{api.tag}"})]


async def test_a_fingerprint_may_be_given_instead_of_the_certificate(api: Api) -> None:
    await api.add("alice", Role.ENGINEER)
    device = api.device("alice-laptop")
    colons = ":".join(device.sha256[i:i + 2] for i in range(0, 64, 2)).upper()

    response = await api.register("alice", device, cert_pem=None, cert_sha256=colons)

    assert response.json()["cert_sha256"] == device.sha256


@pytest.mark.parametrize("body", [{"cert_pem": None}, {"cert_sha256": "ab" * 32}, {"cert_pem": "not a cert"},
                                  {"cert_pem": None, "cert_sha256": "xyz"}], ids=["none", "both", "bad-pem", "bad-hex"])
async def test_registration_needs_exactly_one_valid_fingerprint(api: Api, body: dict[str, Any]) -> None:
    await api.add("alice", Role.ENGINEER)

    response = await api.register("alice", api.device("d"), **body)

    assert (response.status_code, response.json()["code"]) == (422, "invalid_input")


async def test_a_certificate_is_registered_once_ever(api: Api) -> None:
    await api.add("alice", Role.ENGINEER)
    await api.add("bob", Role.ENGINEER)
    device = api.device("shared")
    first = (await api.register("alice", device)).json()
    await api.client.post(f"/admin/saws/{first['id']}/revoke", headers=ADMIN, json={"reason": "reimaged"})

    again = await api.register("bob", device)

    assert (again.status_code, again.json()["code"]) == (409, "saw_exists")


async def test_owner_must_be_active_staff(api: Api) -> None:
    await api.add("gone", Role.ENGINEER)
    await api.client.post(f"/admin/staff/{api.who('gone')}/deactivate", headers=ADMIN)

    for owner in ("gone", "nobody"):
        response = await api.register(owner, api.device(owner))
        assert (response.status_code, response.json()["code"]) == (422, "saw_owner_invalid")


async def test_a_staff_admin_cannot_register_a_saw_for_themselves(api: Api) -> None:
    await api.add("root", Role.ADMIN, Role.ENGINEER)
    await api.add("alice", Role.ENGINEER)
    admin = bearer(api.mint(api.who("root"), [Role.ADMIN]))

    own = await api.register("root", api.device("root"), headers=admin)
    other = await api.register("alice", api.device("alice"), headers=admin)

    assert (own.status_code, own.json()["code"]) == (403, "self_administration")
    assert other.status_code == 201
    assert other.json()["registered_by"] == api.who("root")


async def test_engineers_cannot_register_devices(api: Api) -> None:
    await api.add("alice", Role.ENGINEER)

    response = await api.register("alice", api.device("alice"), headers=api.engineer("alice"))

    assert (response.status_code, response.json()["code"]) == (403, "missing_role")


async def test_whoami_names_the_saw_the_request_comes_from(api: Api) -> None:
    await api.add("alice", Role.ENGINEER)
    device = api.device("alice-laptop")
    saw = (await api.register("alice", device)).json()

    response = await api.me("alice", device)

    assert response.status_code == 200, response.text
    assert response.json()["id"] == saw["id"]


async def test_whoami_without_a_saw_is_saw_required(api: Api) -> None:
    await api.add("alice", Role.ENGINEER)
    await api.register("alice", api.device("alice-laptop"))

    unregistered = await api.me("alice", api.device("unknown"))
    bare = await api.me("alice", None)

    for response in (unregistered, bare):
        assert (response.status_code, response.json()["code"]) == (403, "saw_required")


async def test_someone_elses_saw_is_not_mine(api: Api) -> None:
    await api.add("alice", Role.ENGINEER)
    await api.add("bob", Role.ENGINEER)
    alices = api.device("alice-laptop")
    await api.register("alice", alices)

    response = await api.me("bob", alices)

    assert (response.status_code, response.json()["code"]) == (403, "saw_required")


async def test_revoking_takes_effect_on_the_next_request_and_is_audited(api: Api) -> None:
    await api.add("alice", Role.ENGINEER)
    device = api.device("alice-laptop")
    saw = (await api.register("alice", device)).json()
    assert (await api.me("alice", device)).status_code == 200

    revoked = await api.client.post(f"/admin/saws/{saw['id']}/revoke", headers=ADMIN, json={"reason": "lost"})
    again = await api.client.post(f"/admin/saws/{saw['id']}/revoke", headers=ADMIN, json={"reason": "lost"})

    assert revoked.json()["revoke_reason"] == "lost"
    assert revoked.json()["revoked_by"] == "admin-token"
    assert (again.status_code, again.json()["code"]) == (409, "saw_revoked")
    response = await api.me("alice", device)
    assert (response.status_code, response.json()["code"]) == (403, "saw_required")
    async with api.app.state.ctx.session_factory() as session:
        actions = [(r.action, r.detail) for r in await audit_records(session) if r.saw == saw["id"]]
    assert actions[-1] == ("saw.revoked", {"reason": "lost"})


async def test_forged_headers_from_a_peer_that_is_not_the_proxy_are_ignored(api: Api) -> None:
    await api.add("alice", Role.ENGINEER)
    device = api.device("alice-laptop")
    await api.register("alice", device)
    elsewhere = httpx.ASGITransport(app=api.app, client=("203.0.113.50", 40000))

    async with httpx.AsyncClient(transport=elsewhere, base_url="http://t") as client:
        response = await api.me("alice", device, client=client)

    assert (response.status_code, response.json()["code"]) == (403, "saw_required")


async def test_without_saw_settings_no_request_is_from_a_saw(
    app_db_url: str, tmp_path: Path, identity_settings: IdentitySettings, api: Api
) -> None:
    await api.add("alice", Role.ENGINEER)
    device = api.device("alice-laptop")
    await api.register("alice", device)
    default = build_app(app_db_url, tmp_path / "default", identity_settings, SawSettings())

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=default), base_url="http://t") as client:
        response = await api.me("alice", device, client=client)

    assert (response.status_code, response.json()["code"]) == (403, "saw_required")
    await close_context(default.state.ctx)


async def test_whoami_needs_an_engineer_with_an_active_record(api: Api) -> None:
    await api.add("mgr", Role.MANAGER)

    response = await api.client.get("/access/saw/me", headers=bearer(api.mint(api.who("mgr"), [Role.ENGINEER])))

    assert (response.status_code, response.json()["code"]) == (403, "missing_role")


async def test_admins_list_and_show_devices(api: Api) -> None:
    await api.add("alice", Role.ENGINEER)
    first = (await api.register("alice", api.device("one"))).json()
    second = (await api.register("alice", api.device("two"))).json()
    await api.client.post(f"/admin/saws/{first['id']}/revoke", headers=ADMIN, json={"reason": "left"})

    listed = await api.client.get("/admin/saws", headers=ADMIN, params={"owner": api.who("alice")})
    active = await api.client.get("/admin/saws", headers=ADMIN, params={"owner": api.who("alice"), "active_only": True})
    shown = await api.client.get(f"/admin/saws/{second['id']}", headers=ADMIN)
    missing = await api.client.get(f"/admin/saws/{uuid4()}", headers=ADMIN)

    assert [s["id"] for s in listed.json()] == [first["id"], second["id"]]
    assert [s["id"] for s in active.json()] == [second["id"]]
    assert shown.json()["label"] == f"SAW-{api.tag}"
    assert (missing.status_code, missing.json()["code"]) == (404, "saw_not_found")
