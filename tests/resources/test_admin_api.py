"""The resource admin API: guarded by the admin token, validated against regions, problem+json errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from app.wiring import close_context
from tests.fixtures.audit import audit_rows
from tests.fixtures.relay import TEST_ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}


@pytest.fixture
async def api(app_db_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(data_dir=tmp_path / "data", database_url=app_db_url, standin_enabled=False,
                        demo_resource=False, admin_token=TEST_ADMIN_TOKEN)
    app = create_app(settings)
    async with app.router.lifespan_context(app), \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield client


def body(name: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
    return {"name": name, "region": "westeurope", "upstream_endpoint": "https://contoso.services.ai.azure.com/",
            "owner_tenant": "tenant-1", **(overrides or {})}


async def test_admin_registers_lists_and_removes_a_resource(api: httpx.AsyncClient, request: pytest.FixtureRequest
                                                            ) -> None:
    name = f"contoso-{abs(hash(request.node.name)) % 10**8}"
    created = await api.post("/admin/resources", json=body(name), headers=ADMIN)
    assert created.status_code == 201, created.text
    assert created.json()["upstream_endpoint"] == "wss://contoso.services.ai.azure.com"
    assert created.json()["region"] == "westeurope"
    listed = await api.get("/admin/resources", headers=ADMIN)
    assert name in [r["name"] for r in listed.json()]
    assert (await api.delete(f"/admin/resources/{name}", headers=ADMIN)).status_code == 204
    missing = await api.get(f"/admin/resources/{name}", headers=ADMIN)
    assert missing.status_code == 404
    assert missing.json()["code"] == "resource_not_found"


async def test_duplicate_name_is_a_409(api: httpx.AsyncClient, request: pytest.FixtureRequest) -> None:
    name = f"dup-{abs(hash(request.node.name)) % 10**8}"
    assert (await api.post("/admin/resources", json=body(name), headers=ADMIN)).status_code == 201
    again = await api.post("/admin/resources", json=body(name), headers=ADMIN)
    assert again.status_code == 409
    assert again.json()["code"] == "resource_exists"
    await api.delete(f"/admin/resources/{name}", headers=ADMIN)


@pytest.mark.parametrize(("overrides", "code"), [
    ({"region": "mars"}, "unknown_region"),
    ({"upstream_endpoint": "ftp://x"}, "invalid_upstream"),
    ({"upstream_endpoint": "wss://x/?api-key=secret"}, "invalid_upstream"),
    ({"upstream_endpoint": "wss://user:pw@x"}, "invalid_upstream"),
    ({"name": "Not A Name"}, "invalid_input"),
])
async def test_bad_resources_are_refused_with_a_clear_code(
    api: httpx.AsyncClient, overrides: dict[str, str], code: str
) -> None:
    response = await api.post("/admin/resources", json=body("bad", overrides), headers=ADMIN)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code
    assert "secret" not in response.text


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}])
async def test_admin_api_needs_the_admin_token(api: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await api.get("/admin/resources", headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


async def test_admin_api_is_closed_when_no_token_is_configured(app_db_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d", database_url=app_db_url, standin_enabled=False,
                        demo_resource=False)
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.get("/admin/resources", headers=ADMIN)
    await close_context(app.state.ctx)
    assert response.status_code == 403
    assert response.json()["code"] == "admin_disabled"


async def test_health_readiness_and_metrics(api: httpx.AsyncClient, db_kind: str) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    role = checks.pop("database_role")  # reported, never gating (tests/test_database_roles.py checks its values)
    assert checks == {"relay": "ok", "resources": "ok", "database": "ok", "storage:eastus": "ok",
                      "storage:westeurope": "ok"}
    # The tests connect to PostgreSQL as its superuser: reported as such once the start-up check has run.
    assert role == "not_applicable" if db_kind == "sqlite" else role in {"checking", "superuser"}
    metrics = (await api.get("/metrics")).text
    assert "voicelog_relay_active_sessions" in metrics
    assert "voicelog_relay_added_latency_seconds_bucket" in metrics


async def test_resource_changes_are_audited_and_one_with_tickets_cannot_be_removed(
    api: httpx.AsyncClient, request: pytest.FixtureRequest
) -> None:

    from app.tickets.models import Ticket

    name = f"audited-{abs(hash(request.node.name)) % 10**8}"
    created = (await api.post("/admin/resources", json=body(name), headers=ADMIN)).json()
    app = api._transport.app  # type: ignore[attr-defined]
    async with app.state.ctx.session_factory() as session:
        session.add(Ticket(resource_id=created["id"], external_ref=f"INC-{name}", created_by="svc",
                           created_at=app.state.ctx.clock.now()))
        await session.commit()
    refused = await api.delete(f"/admin/resources/{name}", headers=ADMIN)
    assert (refused.status_code, refused.json()["code"]) == (409, "resource_in_use")
    async with app.state.ctx.session_factory() as session:
        actions = [r[0] for r in await audit_rows(session, "action", resource_id=created["id"])]
    assert actions == ["resource.created"]
