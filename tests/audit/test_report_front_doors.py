"""Every report made, whatever the front door (API, console page or download, CLI), writes exactly one
`report.generated` entry with the same fields (issue 19)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from app.audit.actions import AuditAction
from app.db import create_engine, create_session_factory
from app.identity.principal import Role
from app.identity.settings import IdentitySettings
from app.retention.report import AUDIT_REPORT_KIND
from tests.console.test_shared_sessions import COOKIE, LOGIN_COOKIE, set_cookie, with_cookie
from tests.fixtures.audit import audit_rows
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.relay import RelayHandle, relay_settings, run_relay
from tests.fixtures.staff import add_staff_record

ROOT = Path(__file__).resolve().parents[2]
FIRST, LAST = "2031-07-01", "2031-07-02"
FIELDS = {"report", "period_from", "period_to", "head_seq"}


@pytest.fixture
async def service(tmp_path: Path, identity_settings: IdentitySettings, app_db_url: str
                  ) -> AsyncIterator[RelayHandle]:
    async with run_relay(relay_settings(tmp_path, app_db_url, identity=identity_settings)) as handle:
        yield handle


async def generated_by(url: str, actor_id: str) -> Counter[str]:
    """The `report.generated` entries of `actor_id` for this test's period, chained or queued, by report."""
    engine = create_engine(url)
    try:
        async with create_session_factory(engine)() as session:
            rows = await audit_rows(session, "detail", action=AuditAction.REPORT_GENERATED.value, actor_id=actor_id)
    finally:
        await engine.dispose()
    found = [json.loads(str(row[0])) for row in rows]
    assert all(set(d) == FIELDS for d in found)  # the API's fields, whoever made the report
    return Counter(str(d["report"]) for d in found if (d["period_from"], d["period_to"]) == (FIRST, LAST))


async def console_cookie(base: str, subject: str) -> str:
    """The console's sign-in (OIDC code + PKCE against the dev issuer) as an auditor, without a browser."""
    async with httpx.AsyncClient(base_url=base) as client:
        start = await client.get("/console/login", params={"next": "/console/auditor"})
        login_cookie = set_cookie(start, LOGIN_COOKIE)
        assert start.status_code == 303, start.text
        assert login_cookie
        form = await client.get(start.headers["location"])
        transaction = re.search(r'name="transaction" value="([^"]+)"', form.text)
        assert transaction is not None, form.text
        issued = await client.post("/dev/oidc/authorize", data={
            "transaction": transaction.group(1), "subject": subject, "roles": ["auditor"], "tenant": ""})
        assert issued.status_code == 303, issued.text
        callback = httpx.URL(issued.headers["location"]).raw_path.decode()
        done = await client.get(callback, headers=with_cookie(LOGIN_COOKIE, login_cookie))
        cookie = set_cookie(done, COOKIE)
        assert cookie, done.text
        return cookie


def voicelog(settings_dir: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VOICELOG_DATABASE_URL": url, "VOICELOG_DATA_DIR": str(settings_dir)}
    return subprocess.run([sys.executable, "-m", "app.cli_main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


async def test_the_api_and_the_console_write_one_entry_per_report(
    service: RelayHandle, app_db_url: str, mint_token: MintToken,
) -> None:
    subject = f"audrey-{uuid4().hex[:6]}"
    engine = create_engine(app_db_url)
    try:
        async with create_session_factory(engine)() as session:
            await add_staff_record(session, subject, Role.AUDITOR, now=datetime.now(UTC))
            await session.commit()
    finally:
        await engine.dispose()
    period = {"from": FIRST, "to": LAST}
    token = bearer(mint_token(subject, [Role.AUDITOR]))
    cookie = with_cookie(COOKIE, await console_cookie(service.http, subject))
    doors = [
        ("/audit/reports/access-review", token, "access_review"),
        ("/retention/report", token, AUDIT_REPORT_KIND),
        ("/console/auditor", cookie, "access_review"),
        ("/console/auditor/retention", cookie, "retention"),
        ("/console/auditor/reports/access-review.csv", cookie, "access_review"),
        ("/console/auditor/reports/retention.json", cookie, "retention"),
    ]
    async with httpx.AsyncClient(base_url=service.http) as client:
        for path, headers, kind in doors:
            before = await generated_by(app_db_url, subject)
            answer = await client.get(path, params=period, headers=headers)
            assert answer.status_code == 200, (path, answer.text[:300])
            assert await generated_by(app_db_url, subject) - before == Counter({kind: 1}), path


async def test_the_cli_writes_one_entry_per_report(app_db_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    commands = [
        (["audit", "report", "access-review"], "access_review"),
        (["audit", "report", "retention", "--format", "csv"], "retention"),
        (["retention", "report"], AUDIT_REPORT_KIND),
    ]
    for command, kind in commands:
        before = await generated_by(app_db_url, "cli")
        done = voicelog(data_dir, app_db_url, *command, "--from", FIRST, "--to", LAST)
        assert done.returncode == 0, done.stderr
        assert await generated_by(app_db_url, "cli") - before == Counter({kind: 1}), command
