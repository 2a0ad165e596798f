"""The retention report: the audit's retention audit, extended with blobs pending, signed; route, CLI, daily job."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select
from typer.testing import CliRunner

from app.audit.actions import AuditAction
from app.audit.reports.entries import Period
from app.audit.reports.retention import build_retention_audit
from app.audit.reports.signing import check_report_signature, report_content
from app.audit.runtime import AuditRuntime
from app.audit.service import ChainHead, read_chain_head
from app.config import Settings
from app.context import attach_context
from app.errors import install_error_handlers
from app.identity.principal import Role, TokenVerifier
from app.retention.cli import retention_cli
from app.retention.jobs import DAILY_REPORT
from app.retention.models import RetentionReport
from app.retention.report import CSV_HEADER, REPORT_KIND
from app.retention.routes import router
from app.wiring import build_context
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.staff import add_staff_record
from tests.retention.test_purge import with_failing_deletes
from tests.retention.world import LIFETIME, World

STORAGE_KEYS = ("blobs_pending", "storage_as_of")


async def purged_world(world: World) -> Period:
    """Six recordings in six buckets over a day, purged on time (the first bucket's blob left pending)."""
    epoch = world.clock.now()
    for n in range(6):
        await world.record(("eastus", "westeurope")[n % 2], epoch + timedelta(hours=3 * n, minutes=5))
    purger = world.purger()
    world.clock.advance(LIFETIME - timedelta(minutes=1))  # the first bucket is due (60 s lead)
    purger.stores = with_failing_deletes(world, RuntimeError("store down"))
    assert (await purger.run()).blobs_pending == 1
    purger.stores = world.stores
    while world.clock.now() < epoch + LIFETIME + timedelta(hours=16):
        await purger.run()
        world.clock.advance(timedelta(minutes=10))
    await world.chain()
    return Period(epoch.date(), (epoch + LIFETIME + timedelta(days=1)).date())


def audit_part(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what it adds to the audit's retention audit."""
    stripped = {k: v for k, v in report.items() if k not in STORAGE_KEYS}
    stripped["days"] = [{k: v for k, v in d.items() if k != "blobs_pending"} for d in report["days"]]
    stripped["totals"] = {k: v for k, v in report["totals"].items() if k != "blobs_pending"}
    return stripped


def api(world: World, runtime: AuditRuntime, verifier: TokenVerifier, tmp_path: Path) -> FastAPI:
    app = FastAPI()
    ctx = build_context(Settings(data_dir=tmp_path / "app"), clock=world.clock, engine=world.engine, audit=runtime)
    attach_context(app, replace(ctx, session_factory=world.factory, admin_token=None, token_verifier=verifier))
    install_error_handlers(app)
    app.include_router(router)
    return app


async def test_auditors_get_the_audit_retention_report_extended_with_blobs_pending_signed(
    world: World, token_verifier: TokenVerifier, mint_token: MintToken, tmp_path: Path,
) -> None:
    period = await purged_world(world)
    async with world.factory() as session:  # C5: the auditor role is in the token AND the active record
        await add_staff_record(session, "ada", Role.AUDITOR, now=world.clock.now())
        await session.commit()
    runtime = world.audit_runtime()
    query = f"/retention/report?from={period.first}&to={period.last}"
    transport = httpx.ASGITransport(app=api(world, runtime, token_verifier, tmp_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        engineer = await client.get(query, headers=bearer(mint_token("eve", [Role.ENGINEER, Role.MANAGER])))
        anonymous = await client.get(query)
        auditor = bearer(mint_token("ada", [Role.AUDITOR]))
        as_json = await client.get(query, headers=auditor)
        as_csv = await client.get(query + "&format=csv", headers=auditor)
    assert (engineer.status_code, anonymous.status_code) == (403, 401)
    assert as_json.status_code == as_csv.status_code == 200

    document = as_json.json()
    report, envelope = document["report"], document["envelope"]
    keys = runtime.keyring.public_keys()
    assert check_report_signature(envelope, document["signature"], report_content(report), keys).ok
    assert envelope["kind"] == REPORT_KIND
    totals = report["totals"]
    assert (totals["recordings_started"], totals["recordings_purged"], totals["blobs_pending"]) == (6, 6, 1)
    assert totals["overdue_recordings"] == totals["overdue_kek_buckets"] == 0
    assert sum(d["kek_buckets_destroyed"] for d in report["days"]) == 6
    assert [p["reason"] for p in report["blobs_pending"]] == ["retention"]
    # What the audit module computes at the same head and time, unchanged: this report extends it.
    async with world.factory() as session:
        audit = await build_retention_audit(
            session=session, period=period, head=ChainHead(envelope["head"]["seq"], envelope["head"]["hash"]),
            retention_days=30, as_of=world.clock.now())
    assert audit_part(report) == json.loads(json.dumps(audit))

    rows = list(csv.reader(io.StringIO(as_csv.text)))
    assert tuple(rows[0]) == CSV_HEADER
    assert sum(int(r[CSV_HEADER.index("blobs_pending")]) for r in rows[1:]) == 1
    csv_envelope = json.loads(base64.urlsafe_b64decode(as_csv.headers["x-audit-report-envelope"]))
    signature = {"key_id": as_csv.headers["x-audit-report-key-id"],
                 "value": as_csv.headers["x-audit-report-signature"]}
    assert check_report_signature(csv_envelope, signature, as_csv.content, keys).ok
    generated = [d for _, d in await world.entries(AuditAction.REPORT_GENERATED)]
    assert [json.loads(d)["report"] for d in generated] == ["retention", "retention"]


async def test_the_daily_job_signs_each_finished_day_once(world: World) -> None:
    await purged_world(world)
    yesterday = world.clock.now().date() - timedelta(days=1)
    scheduler = world.scheduler()
    first = await scheduler.run_job(DAILY_REPORT)
    world.clock.advance(timedelta(hours=2))
    again = await scheduler.run_job(DAILY_REPORT)
    assert first.items == 7
    assert (again.outcome, again.items) == ("ok", 0)
    async with world.factory() as session:
        stored = list((await session.execute(select(RetentionReport).order_by(RetentionReport.day))).scalars())
    assert [r.day for r in stored] == [yesterday - timedelta(days=n) for n in range(6, -1, -1)]
    keys = scheduler.context.audit.keyring.public_keys()
    for row in stored:
        assert check_report_signature(json.loads(row.envelope), json.loads(row.signature), row.content.encode(),
                                      keys).ok
        assert row.within_limit


async def test_cli_writes_the_signed_csv_and_its_envelope(world: World, tmp_path: Path) -> None:
    period = await purged_world(world)
    runtime = world.audit_runtime()
    out = tmp_path / "retention.csv"
    env = {"VOICELOG_DATABASE_URL": world.url, "VOICELOG_DATA_DIR": str(world.data_dir)}
    result = await asyncio.to_thread(
        CliRunner().invoke, retention_cli,
        ["report", "--from", str(period.first), "--to", str(period.last), "--format", "csv", "-o", str(out)], env=env,
    )
    assert result.exit_code == 0, result.output
    sidecar = json.loads((tmp_path / "retention.csv.sig.json").read_text())
    assert sidecar["envelope"]["kind"] == REPORT_KIND
    assert check_report_signature(sidecar["envelope"], sidecar["signature"], out.read_bytes(),
                                  runtime.keyring.public_keys()).ok
    async with world.factory() as session:
        assert (await read_chain_head(session)).seq > 0
