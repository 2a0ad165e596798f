"""The audit routes on a FastAPI app of our own (app.main does not mount them yet), with real dev-issuer tokens:
public keys for anyone, verification and reports for auditors only."""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import generate_latest

from app.audit.checkpoints import CheckpointPolicy, export_checkpoints, seal
from app.audit.metrics import AuditMetrics
from app.audit.routes import router
from app.audit.runtime import AuditRuntime
from app.clock import ManualClock
from app.config import Settings
from app.context import attach_context
from app.errors import install_error_handlers
from app.identity.principal import Role, TokenVerifier
from app.metrics import Metrics
from app.wiring import build_context
from tests.audit import tamper
from tests.audit.scenario import append_and_chain, example_steps
from tests.fixtures.audit import AuditDb, disable_audit_triggers
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.staff import add_staff_record


@pytest.fixture
async def audit_api(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime, token_verifier: TokenVerifier,
    tmp_path: Path,
) -> AsyncIterator[httpx.AsyncClient]:
    metrics = Metrics()
    runtime = AuditRuntime(audit_runtime.settings, audit_runtime.keyring, audit_runtime.sink,
                           metrics=AuditMetrics(metrics.registry))
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    ctx = build_context(Settings(data_dir=tmp_path, database_url=audit_db.url), clock=audit_clock,
                        engine=audit_db.engine, audit=runtime)
    attach_context(app, replace(ctx, session_factory=audit_db.factory, metrics=metrics, admin_token=None,
                                token_verifier=token_verifier))
    async with audit_db.factory() as session:
        for n in range(3):
            await append_and_chain(session, audit_clock, example_steps(n, audit_clock.now()))
        await seal(session=session, clock=audit_clock, keyring=runtime.keyring, policy=CheckpointPolicy(),
                   wait=True)
        await export_checkpoints(session=session, sink=runtime.sink)
        await add_staff_record(session, "audrey", Role.AUDITOR, now=audit_clock.now())  # C5: token AND record
        await session.commit()
    app.state.test_metrics = metrics
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://audit.test") as client:
        client.app = app  # type: ignore[attr-defined]
        yield client


async def test_public_keys_are_public(audit_api: httpx.AsyncClient) -> None:
    response = await audit_api.get("/audit/keys")
    assert response.status_code == 200
    body = response.json()
    assert body["algorithm"] == "Ed25519"
    assert len(body["keys"]) == 1
    assert body["keys"][0]["key_id"].startswith("ed25519:")
    assert "private" not in response.text


@pytest.mark.parametrize("path", ["/audit/verify", "/audit/checkpoints",
                                  "/audit/reports/access-review?from=2030-03-04&to=2030-03-04",
                                  "/audit/reports/retention?from=2030-03-04&to=2030-03-04"])
async def test_everything_else_needs_the_auditor_role(
    audit_api: httpx.AsyncClient, mint_token: MintToken, path: str
) -> None:
    assert (await audit_api.get(path)).status_code == 401
    engineer = await audit_api.get(path, headers=bearer(mint_token("eve", [Role.ENGINEER, Role.MANAGER])))
    assert engineer.status_code == 403
    assert engineer.json()["code"] == "missing_role"
    auditor = await audit_api.get(path, headers=bearer(mint_token("audrey", [Role.AUDITOR])))
    assert auditor.status_code == 200


async def test_verify_reports_the_chain_state_and_exports_metrics(
    audit_api: httpx.AsyncClient, mint_token: MintToken, audit_db: AuditDb
) -> None:
    headers = bearer(mint_token("audrey", [Role.AUDITOR]))
    good = (await audit_api.get("/audit/verify", headers=headers)).json()
    assert good["ok"] is True
    assert good["sealed_through"] == good["head_seq"] == 26
    async with audit_db.factory() as session:
        await disable_audit_triggers(session)
        await tamper.delete(session, 7)
        await session.commit()
    bad = (await audit_api.get("/audit/verify", headers=headers)).json()
    assert bad["ok"] is False
    assert bad["damage"]["kind"] == "deleted"
    assert bad["damage"]["seq"] == 7
    exposition = generate_latest(audit_api.app.state.test_metrics.registry).decode()  # type: ignore[attr-defined]
    assert "voicelog_audit_chain_ok 0.0" in exposition
    assert 'voicelog_audit_damage{kind="deleted"} 1.0' in exposition


async def test_reports_come_signed_in_json_and_csv(audit_api: httpx.AsyncClient, mint_token: MintToken) -> None:
    headers = bearer(mint_token("audrey", [Role.AUDITOR]))
    document = (await audit_api.get("/audit/reports/access-review?from=2030-03-04&to=2030-03-04",
                                    headers=headers)).json()
    assert document["envelope"]["kind"] == "access_review"
    assert len(document["report"]["grants"]) == 3
    checked = await audit_api.post("/audit/reports/verify", json=document, headers=headers)
    assert checked.json() == {"ok": True, "signature": "ok", "chain": "ok", "recomputed": "match", "head_seq": 26,
                              "unverified": []}
    document["report"]["totals"]["reads"] = 0
    assert (await audit_api.post("/audit/reports/verify", json=document, headers=headers)).json()["ok"] is False

    response = await audit_api.get("/audit/reports/retention?from=2030-03-04&to=2030-03-05&format=csv",
                                   headers=headers)
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["region"], r["day"]) for r in rows] == [("eastus", "2030-03-04"), ("eastus", "2030-03-05")]
    envelope = json.loads(base64.urlsafe_b64decode(response.headers["x-audit-report-envelope"]))
    assert envelope["format"] == "csv"
    assert response.headers["x-audit-report-key-id"].startswith("ed25519:")


async def test_a_bad_period_is_a_problem_not_a_crash(audit_api: httpx.AsyncClient, mint_token: MintToken) -> None:
    headers = bearer(mint_token("audrey", [Role.AUDITOR]))
    response = await audit_api.get("/audit/reports/retention?from=2030-03-05&to=2030-03-04", headers=headers)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_report_period"
